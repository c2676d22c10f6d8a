"""Web Push: VAPID keys, subscriptions, the push sender and the completion hook.

``notify.service.create(settings, store, metrics)`` builds the VAPID keys and the
notifier, whose ``on_completion`` the app subscribes to answers' endings; nothing
here knows the web framework.
"""
