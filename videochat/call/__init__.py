"""What keeps a call alive: supervisor, recovery, quality ladder, RTCP, presence,
call log, room access."""
