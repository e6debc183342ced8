"""A ClientApp call's result must be a reply to the message it was given.

Flower's engine (1.41) stores whatever a backend returns when it is a ``Message`` and drops
anything else without a word (``if out_mssg:``); a ``Message`` that replies to no message, or
to another, is refused later by the SuperLink's state with a line naming no client. Either way
the server waits out ``server.timeout`` (an hour by default) for a reply that never comes, and
then says only that a client sent none. Both backends fedmtl runs ClientApps with (in-process,
and Ray's through :mod:`fedmtl.launch.ray_pipeline`) check the result with
:func:`checked_reply`: a ClientApp that returns ``None``, or a message that is not a reply to
its message, fails that call at once, as a ClientApp that raises does (an error reply naming
what it returned, which the server logs under the client's id).
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message
from flwr.clientapp.client_app import ClientAppException


def checked_reply(message: Message, reply: Any) -> Message:
    """``reply`` when it is a ``Message`` replying to ``message``.

    Raises
    ------
    ClientAppException
        Otherwise, saying what the ClientApp returned (the engine turns it into an error reply).
    """
    if not isinstance(reply, Message):
        raise ClientAppException(f"the ClientApp returned {type(reply).__name__}, not a reply Message "
                                 "(a function registered with @app.train() and the like must return one)")
    if reply.metadata.reply_to_message_id != message.metadata.message_id:
        raise ClientAppException("the ClientApp returned a Message that is not a reply to the message it was "
                                 "given (build it with Message(..., reply_to=msg))")
    return reply
