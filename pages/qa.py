from videochat.ui.qa import render

render()
