"""The job queue: statuses and their transitions, the outbox, the sweeper and the Celery app.

Empty on purpose: ``layerprune.queue.status`` is read by every layer (and its terminal set is
copied by the standalone client), so importing the package must not pull in SQLAlchemy or Celery.
"""
