"""Web Push: VAPID keys, subscriptions, presence, the push sender and the completion hook.

``notify.service.start(app)`` wires the push notifier into a running app;
``notify.service.stop(app)`` drains and closes it.
"""
