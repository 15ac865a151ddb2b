"""A real MCP client (the official Python SDK) for memesh's MCP tests.

usage: client.py http URL KEY       (Streamable HTTP, the key in x-api-key)
       client.py stdio MEMESH_BIN    (launches `memesh mcp`; server and key come from the env)

Reads a JSON list of steps on stdin and prints one JSON line: the result of each step, as the
SDK parsed it (by protocol field names), or the MCP error it raised. Steps:
  {"op": "list_tools"} | {"op": "list_resources"} | {"op": "list_templates"}
  {"op": "call", "tool": NAME, "args": {...}} | {"op": "read", "uri": URI}
"""

import json
import os
import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def run_steps(session, steps):
    init = await session.initialize()
    out = {"initialize": dump(init), "steps": []}
    for step in steps:
        op = step["op"]
        try:
            if op == "list_tools":
                result = await session.list_tools()
            elif op == "list_resources":
                result = await session.list_resources()
            elif op == "list_templates":
                result = await session.list_resource_templates()
            elif op == "call":
                result = await session.call_tool(step["tool"], step.get("args"))
            elif op == "read":
                result = await session.read_resource(step["uri"])
            else:
                raise SystemExit(f"unknown step {op}")
            out["steps"].append({"ok": dump(result)})
        except MCPError as e:
            err = e.error
            out["steps"].append(
                {"error": {"code": err.code, "message": err.message, "data": err.data}}
            )
    return out


async def main():
    transport = sys.argv[1]
    steps = json.load(sys.stdin)
    if transport == "http":
        url, key = sys.argv[2], sys.argv[3]
        async with httpx2.AsyncClient(headers={"x-api-key": key}, timeout=120) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(read, write) as session:
                    out = await run_steps(session, steps)
    elif transport == "stdio":
        # The SDK gives the server a minimal environment: pass memesh's own settings through.
        env = {k: v for k, v in os.environ.items() if k.startswith("MEMESH_")}
        params = StdioServerParameters(command=sys.argv[2], args=["mcp"], env=env)
        async with stdio_client(params) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                out = await run_steps(session, steps)
    else:
        raise SystemExit(f"unknown transport {transport}")
    print(json.dumps(out, ensure_ascii=False))


anyio.run(main)
