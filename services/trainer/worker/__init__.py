"""The job worker: the process the runners start for one attempt of a job.

``protocol`` is the contract with the service (the only module of this package the service
imports); ``train`` and ``export`` are the kinds of work; ``publish`` the step they share.
"""
