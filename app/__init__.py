"""The application: the command line (:mod:`~exitflow.app.cli`), the whole run
(:mod:`~exitflow.app.run`) and its HTML report (:mod:`~exitflow.app.report`, ``templates/``).
"""
