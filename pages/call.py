from videochat.ui import navigation
from videochat.ui.call import render

navigation.ensure_v2()
render()
