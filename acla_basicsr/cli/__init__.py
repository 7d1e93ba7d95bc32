"""The console commands: ``acla-train`` and ``acla-test`` (:mod:`.launch`, basicsr's pipelines run with this
project's checks and per-run fixes) and ``acla-restore`` (:mod:`.restore`)."""
