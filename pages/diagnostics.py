from videochat.ui import navigation
from videochat.ui.diagnostics import render

navigation.ensure_v2()
render()
