"""Where each fact lives in Redis: every key name, made in this one place (and mirrored in Lua).

With prefix ``chime`` (``RedisStore(prefix=...)``; two stores with the same URL and
prefix share their data, another prefix shares nothing):

``chime:ch:{<channel>}``            hash: user_id, conversation_id, model, status,
                                    created_at, finished_at, usage (JSON)
``chime:ch:{<channel>}:log``        stream: event ``n`` is entry ``n-0`` with fields t (type), d (data JSON);
                                    ids run 1..n with no gap and no entry is removed, so its
                                    length (``XLEN``) is the channel's last id
``chime:ch:{<channel>}:text``       string: every delta's content, joined as it is appended
``chime:ch:{<channel>}:wake``       pub/sub channel: each committed batch, for other processes
``chime:running``                   set: the channels without their terminal event
``chime:token:<token hash>``        string: the user id
``chime:user:{<user>}``             hash: token_hash, created_at
``chime:user:{<user>}:conversations``  sorted set: conversation ids, scored by ``touched``
``chime:user:{<user>}:push``        set: the endpoints of the user's push subscriptions
``chime:conv:{<conversation>}``     hash: id, user_id, title, created_at, updated_at, touched
``chime:conv:{<conversation>}:messages``  list: each message as JSON, in order
``chime:conv:{<conversation>}:channels``  set: the conversation's channels
``chime:push:<endpoint>``           hash: user_id, endpoint, p256dh, auth, created_at
``chime:touched``                   counter: orders conversations touched in the same millisecond

A channel's keys share the hash tag ``{<channel>}``. One script appends to every
channel of a round and the records' scripts span users, conversations and
channels, so the store runs on one Redis (a primary, with replicas or Sentinel),
not on a Redis Cluster.
"""

from __future__ import annotations


class Keys:
    """The key names under one prefix."""

    __slots__ = ("prefix", "running", "touched", "probe")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.running = f"{prefix}:running"
        self.touched = f"{prefix}:touched"
        self.probe = f"{prefix}:probe"

    # ---- a channel -------------------------------------------------------

    def channel(self, channel_id: str) -> str:
        return f"{self.prefix}:ch:{{{channel_id}}}"

    def log(self, channel_id: str) -> str:
        return f"{self.prefix}:ch:{{{channel_id}}}:log"

    def text(self, channel_id: str) -> str:
        return f"{self.prefix}:ch:{{{channel_id}}}:text"

    def wake(self, channel_id: str) -> str:
        # The append script is not given this name: it publishes on the hash's key + ":wake".
        return self.channel(channel_id) + ":wake"

    def appending(self, channel_id: str) -> tuple[str, str, str]:
        """A channel's keys for the append script, in its order (after ``running``)."""
        channel = f"{self.prefix}:ch:{{{channel_id}}}"
        return channel, channel + ":log", channel + ":text"

    # ---- records ---------------------------------------------------------

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}:token:{token_hash}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}"

    def conversations_of(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:conversations"

    def subscriptions_of(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:push"

    def conversation(self, conversation_id: str) -> str:
        return f"{self.prefix}:conv:{{{conversation_id}}}"

    def messages(self, conversation_id: str) -> str:
        return f"{self.prefix}:conv:{{{conversation_id}}}:messages"

    def channels_of(self, conversation_id: str) -> str:
        return f"{self.prefix}:conv:{{{conversation_id}}}:channels"

    def subscription(self, endpoint: str) -> str:
        return f"{self.prefix}:push:{endpoint}"
