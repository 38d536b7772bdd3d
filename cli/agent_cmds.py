"""``ota agent`` (run a car agent) and ``ota classify`` (ask the installed model about an image)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.env import ENROLL_TOKEN, SecretError, resolve_secret

if TYPE_CHECKING:
    import numpy as np


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("agent", help="run a car agent: enrol, poll, download, verify, hot-swap")
    p.add_argument("--server", required=True, help="registry URL, e.g. https://registry.example")
    p.add_argument("--ca-cert", type=Path, metavar="FILE",
                   help="PEM file of the CA that signed the registry's https certificate (a private CA)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--enroll-token", help="fleet enrollment token (needed on the first start only); visible in the "
                                          "process list: prefer --enroll-token-file or OTA_ENROLL_TOKEN")
    p.add_argument("--enroll-token-file", type=Path, metavar="FILE",
                   help="read the enrollment token from FILE (env OTA_ENROLL_TOKEN also works)")
    p.add_argument("--root-key", type=Path, help="the fleet's root public key file (root.pub from `ota keys init`; "
                                                 "needed to enrol: the car trusts no key it was not provisioned for)")
    p.add_argument("--state-dir", type=Path, default=Path(".ota-agent"), help="slots, journal, identity")
    p.add_argument("--line", action="append", dest="lines", metavar="LINE",
                   help="model line to follow (repeatable: a car on several lines runs one update engine per line "
                        "in one process; default road-signs)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="device tag (repeatable)")
    p.add_argument("--max-rate", type=float, metavar="BYTES_PER_S", help="download rate limit")
    p.add_argument("--poll-interval", type=float, metavar="S", help="override the server-given poll interval")
    p.add_argument("--once", action="store_true", help="poll once, apply any offer, and exit")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_agent)

    c = subparsers.add_parser("classify", help="classify an image with the model the agent has installed, through "
                                               "its line's input contract (any size, any format PIL reads)")
    c.add_argument("image", type=Path)
    c.add_argument("--agent-dir", type=Path, default=Path(".ota-agent"), help="the agent's --state-dir")
    c.add_argument("--line", help="which line's model, for a car on several lines (default: its first line)")
    c.add_argument("--json", action="store_true", help="print one JSON object (label, probability, class index, "
                                                       "version) for scripts")
    c.set_defaults(func=cmd_classify)


def _tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"ota agent: --tag expects K=V, got {pair!r}")
        tags[key] = value
    return tags


def make_state_dir(path: Path) -> None:
    """The agent's state directory, created 0700: it holds the device's identity and its models.

    An existing directory is left as the operator made it.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def cmd_agent(args: argparse.Namespace) -> int:

    from client import Agent, AgentConfig
    from client.errors import AgentError
    from client.multiagent import ROOT_LINE_FILE, MultiAgent
    from client.trust import read_root_key

    try:
        root_key = read_root_key(args.root_key) if args.root_key else None
    except ValueError as e:
        print(f"ota agent: {e}", file=sys.stderr)
        return 2
    try:
        enroll_token = resolve_secret(args.enroll_token, args.enroll_token_file, ENROLL_TOKEN, "enrollment token")
    except SecretError as e:
        print(f"ota agent: {e}", file=sys.stderr)
        return 2
    if args.ca_cert is not None:
        from client.tls import ca_context

        try:
            ca_context(args.ca_cert)  # a bad file is a usage error now, not a failed poll later
        except AgentError as e:
            print(f"ota agent: {e}", file=sys.stderr)
            return 2
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    lines = args.lines or ["road-signs"]
    config = AgentConfig(
        server_url=args.server,
        device_id=args.device_id,
        state_dir=args.state_dir,
        line=lines[0],
        enroll_token=enroll_token,
        root_public_key=root_key,
        tags=_tags(args.tag),
        poll_interval_s=args.poll_interval,
        max_rate_bytes_per_s=args.max_rate,
        ca_cert_path=args.ca_cert,
    )
    make_state_dir(args.state_dir)
    agent: Agent | MultiAgent
    if len(lines) > 1 or (args.state_dir / ROOT_LINE_FILE).exists():  # once several, always by line
        try:
            agent = MultiAgent(config, lines)
        except ValueError as e:
            print(f"ota agent: {e}", file=sys.stderr)
            return 2
    else:
        agent = Agent(config)
    if not args.once:
        try:
            agent.run()
        except AgentError as e:
            print(f"ota agent: {e}{_tls_hint(e, args)}", file=sys.stderr)
            return 1
        return 0

    try:
        agent.run_once()
    except AgentError as e:
        print(f"ota agent: {e}{_tls_hint(e, args)}", file=sys.stderr)
        return 1
    if isinstance(agent, MultiAgent):
        print("  ".join(f"{line} v{v}" for line, v in agent.running_versions().items()))
    else:
        print(f"running v{agent.running_version}")
    return 0


def _tls_hint(error: Exception, args: argparse.Namespace) -> str:
    """What to do when the registry's certificate was not trusted."""
    if "CERTIFICATE_VERIFY_FAILED" not in str(error) and "certificate verify failed" not in str(error):
        return ""
    if args.ca_cert is None:
        return ("\n  the registry's https certificate is not signed by a CA this machine trusts: if it comes from "
                "your own CA, pass --ca-cert FILE with that CA's PEM certificate")
    return f"\n  the registry's https certificate is not signed by the CA in {args.ca_cert}"


#: Image files ``ota classify`` reads; a camera frame or photo is far smaller.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Decoded pixels ``ota classify`` accepts (PIL's own bomb limit is a warning up to twice its default).
MAX_IMAGE_PIXELS = 64_000_000


def cmd_classify(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from client import Agent, AgentConfig
    from client.errors import AgentError
    from client.hotswap import NoModel
    from client.multiagent import line_dir

    try:
        slots_dir = line_dir(args.agent_dir, args.line)
    except ValueError as e:
        print(f"ota classify: {e}", file=sys.stderr)
        return 2
    if not (slots_dir / "journal.json").exists():
        what = f" for line {args.line}" if args.line else ""
        print(f"ota classify: no agent state{what} in {args.agent_dir} (run `ota agent --state-dir` first)",
              file=sys.stderr)
        return 1
    try:
        image = read_image(args.image)
    except ValueError as e:
        print(f"ota classify: cannot read {args.image}: {e}", file=sys.stderr)
        return 1
    agent = Agent(AgentConfig(server_url="http://offline.invalid", device_id="", state_dir=args.agent_dir,
                              slots_dir=slots_dir))
    try:
        asyncio.run(agent.start())
        prediction = agent.predict(image)
    except NoModel as e:
        print(f"ota classify: {e}", file=sys.stderr)
        return 1
    except AgentError as e:  # a slot that no longer loads, an image the model cannot take
        print(f"ota classify: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"label": prediction.label, "probability": prediction.probability,
                          "class_index": prediction.index, "version": prediction.version}))
    else:
        print(f"{prediction}  (model v{prediction.version})")
    return 0


def read_image(path: Path) -> np.ndarray:
    """An image file of any format PIL reads, as uint8 HxWx3 RGB (grey, palette, RGBA, 16-bit... converted).

    The car's contract does the rest (size, channel order, scale, mean/std): nothing is resized here.

    Raises:
        ValueError: missing, too large, not an image, or a decompression bomb (the message says which).
    """
    import warnings

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from e
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"the file is {size} bytes; ota classify reads images up to {MAX_IMAGE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"the image is {im.width}x{im.height} pixels; ota classify takes up to "
                                     f"{MAX_IMAGE_PIXELS} pixels (scale it down first)")
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(str(e)) from e
