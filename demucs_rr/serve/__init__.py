"""``demucs-rr serve``: a web page and an HTTP API for separation jobs.

* :mod:`demucs_rr.serve.app`: the FastAPI app (:func:`~demucs_rr.serve.app.create_app`).
* :mod:`demucs_rr.serve.store`: the job queue in SQLite (WAL), shared with the workers.
* :mod:`demucs_rr.serve.worker` / :mod:`demucs_rr.serve.pool`: worker processes that separate
  through the same ``Separator`` and stem writer as ``separate``.
* :mod:`demucs_rr.serve.upload`: streaming uploads with the size limit enforced as they arrive.
* :mod:`demucs_rr.serve.job_files`: stems (HTTP Range), waveform PNGs, zips.
* ``static/``: the page (plain HTML, CSS and JavaScript; nothing is loaded from elsewhere).

Only :mod:`demucs_rr.serve.cli` is imported by the command line; everything else needs the
``[serve]`` extra (FastAPI, uvicorn, python-multipart).
"""
