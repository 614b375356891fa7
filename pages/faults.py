from videochat.ui import navigation
from videochat.ui.faults import render

navigation.ensure_v2()
render()
