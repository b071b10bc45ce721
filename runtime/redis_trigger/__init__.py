"""Spin's Redis trigger: ``[[trigger.redis]]`` components called once per message published on their channel.

config (pure: triggers and addresses from spin.toml), executor (one component's ``handle-message``), subscriber
(one server's subscription, reconnecting), app (load at Create, serve at Start). Nothing here is imported by an
app without a Redis trigger.
"""
