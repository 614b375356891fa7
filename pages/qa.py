from videochat.ui import navigation
from videochat.ui.qa import render

navigation.ensure_v2()
render()
