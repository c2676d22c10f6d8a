"""One blueprint per area of the API."""

from sanic import Blueprint

from routes import ai_sdk, channels, chat, conversations, health, openai, pages, push, streams

api = Blueprint.group(chat.bp, streams.bp, channels.bp, conversations.bp, health.bp, pages.bp,
                        push.bp, ai_sdk.bp, openai.bp)
