"""A real A2A agent for memesh's tests, built with the official A2A SDK (a2a-sdk, its Starlette
JSON-RPC routes, served by uvicorn) on loopback. It serves A2A 1.0 JSON-RPC at /a2a (and 0.3 on
the same endpoint unless started with --only-0.3, which serves a 0.3 card and 0.3 only) and its
card at /.well-known/agent-card.json.

Fault switch: POST /fault with {"mode": ...} sets how the next tasks behave:
  "complete" (default): the task completes at once with an artifact echoing the input text;
  "hold":     the task stays working until POST /release {"taskId"} completes it;
  "fail":     the task fails.
and {"cancel": ...} how cancels (CancelTask, tasks/cancel) are answered:
  "ok" (default): the task is canceled;
  "error":  HTTP 503, nothing canceled (a transient failure);
  "ignore": the cancel is answered with the task as it is (still working) and dropped: the
            agent never cancels it (a lost cancel; the task may still complete on release).
Both keys may be given at once; a key left out keeps its setting.
Prints "READY <port>" on stdout once it listens.
"""

import argparse
import asyncio
import json
import socket
import sys

import uvicorn
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from a2a.compat.v0_3 import types as v03
from a2a.helpers.proto_helpers import get_message_text, new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers.default_request_handler_v2 import DefaultRequestHandlerV2
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Part, TaskState

state = {"mode": "complete", "cancel": "ok", "held": {}}

# A cancel answered as a read of the task, for "ignore": the same params in both versions.
CANCEL_AS_GET = {"CancelTask": "GetTask", "tasks/cancel": "tasks/get"}


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue) -> None:
        if context.current_task is None:
            await event_queue.enqueue_event(
                new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED,
                         history=[context.message] if context.message else None)
            )
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.start_work()
        text = get_message_text(context.message) if context.message else ""
        mode = state["mode"]
        if mode == "fail":
            await updater.failed()
            return
        if mode == "hold":
            release = asyncio.Event()
            state["held"][context.task_id] = release
            await release.wait()
        await updater.add_artifact([Part(text=f"echo: {text}")], name="echo")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only-0.3", dest="only_03", action="store_true")
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a2a"

    card = AgentCard(
        name="memesh test agent",
        description="Echoes its input; its behaviour is switched by POST /fault",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="Echo", description="Echoes", tags=["test"])],
    )
    handler = DefaultRequestHandlerV2(
        agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card
    )

    if args.only_03:
        card_json = v03.AgentCard(
            name="memesh test agent",
            description="Echoes its input (A2A 0.3 only)",
            url=url,
            version="1.0.0",
            protocol_version="0.3.0",
            capabilities=v03.AgentCapabilities(streaming=False),
            default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[v03.AgentSkill(id="echo", name="Echo", description="Echoes", tags=["test"])],
        ).model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        card_json = MessageToDict(card)

    async def card_route(_: Request):
        return JSONResponse(card_json)

    async def fault(request: Request):
        body = await request.json()
        for key in ("mode", "cancel"):
            if key in body:
                state[key] = body[key]
        return JSONResponse({"mode": state["mode"], "cancel": state["cancel"]})

    async def release(request: Request):
        task = (await request.json())["taskId"]
        event = state["held"].pop(task, None)
        if event is None:
            return JSONResponse({"error": "not held"}, status_code=404)
        event.set()
        return JSONResponse({"released": task})

    rpc = create_jsonrpc_routes(handler, "/a2a", enable_v0_3_compat=True)
    inner = rpc[0].endpoint

    async def dispatch(request: Request):
        body = json.loads(await request.body())
        method = body.get("method", "")
        if args.only_03 and "/" not in method:
            return JSONResponse(
                {"jsonrpc": "2.0", "id": body.get("id"),
                 "error": {"code": -32601, "message": "method not found"}}
            )
        if method in CANCEL_AS_GET:
            if state["cancel"] == "error":
                return JSONResponse({"error": "cancel service unavailable"}, status_code=503)
            if state["cancel"] == "ignore":
                body["method"] = CANCEL_AS_GET[method]
                # Starlette caches the body it read; the SDK's route reads the rewritten one.
                request._body = json.dumps(body).encode()
        return await inner(request)

    rpc = [Route("/a2a", dispatch, methods=["POST"])]

    app = Starlette(
        routes=rpc
        + [
            Route("/.well-known/agent-card.json", card_route),
            Route("/fault", fault, methods=["POST"]),
            Route("/release", release, methods=["POST"]),
        ]
    )
    print(f"READY {port}", flush=True)
    config = uvicorn.Config(app, log_level="warning")
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
