"""Media: legs, the relay, rooms and participants, ICE/TURN, synthetic bot media."""
