"""What the HTTP API of SPEC 7 does, without the web framework (:mod:`.handlers`): the
Ray Serve application in ``serving/app.py`` wraps it."""
