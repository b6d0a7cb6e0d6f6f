"""`probed run --workers N`: probes spread over worker processes behind one HTTP face.

plan.py decides how many workers and which runs which probe; parent.py is the process that owns
the listener, signals and reload; child.py is a worker; merge.py makes one exposition of theirs;
channel.py is what passes between them.
"""
