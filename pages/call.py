from videochat.ui.call import render

render()
