"""Prints Agent Cards built with the official A2A SDK (a2a-sdk on PyPI), one JSON per line:
the A2A 1.0 card as the SDK serialises it, then the same agent as an A2A 0.3 card from the SDK's
compatibility types. The URL of the agent is the first argument."""

import json
import sys

from google.protobuf.json_format import MessageToDict

from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from a2a.compat.v0_3 import types as v03

url = sys.argv[1]

skill = AgentSkill(
    id="summarise",
    name="Summarise",
    description="Summarises a document",
    tags=["text", "summary"],
    examples=["Summarise this report"],
)
card = AgentCard(
    name="SDK Summariser",
    description="An agent built with the official A2A SDK",
    version="1.2.3",
    supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
    capabilities=AgentCapabilities(streaming=True, push_notifications=False),
    default_input_modes=["text/plain"],
    default_output_modes=["text/plain"],
    skills=[skill],
)
print(json.dumps(MessageToDict(card)))

old = v03.AgentCard(
    name="SDK Summariser",
    description="An agent built with the official A2A SDK",
    url=url,
    version="1.2.3",
    protocol_version="0.3.0",
    capabilities=v03.AgentCapabilities(streaming=True),
    default_input_modes=["text/plain"],
    default_output_modes=["text/plain"],
    skills=[v03.AgentSkill(id="summarise", name="Summarise", description="Summarises a document", tags=["text"])],
)
print(json.dumps(old.model_dump(mode="json", by_alias=True, exclude_none=True)))
