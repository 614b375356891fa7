from videochat.ui.faults import render

render()
