from videochat.ui.diagnostics import render

render()
