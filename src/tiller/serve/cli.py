"""``tiller serve --model PATH``: an OpenAI-compatible chat server for a tiller model.

Mounted by the lead in ``tiller.cli`` as ``app.command("serve")(serve_cmd)``.
"""

from __future__ import annotations

from typing import Annotated

import typer


def serve_cmd(
    model: Annotated[str, typer.Option("--model", help="Saved tiller model folder (or hub name) to serve.")],
    host: Annotated[
        str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    device: Annotated[
        str | None, typer.Option(help="torch device (cpu, cuda, cuda:1); default: best available.")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send as `model`; default: the --model value.")
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar="TILLER_API_KEY",
            help="A key clients must send as `Authorization: Bearer KEY` (repeatable; or TILLER_API_KEY). "
            "Without one, anyone who reaches the port can use the model: set one before --host 0.0.0.0.",
        ),
    ] = None,
    max_body: Annotated[int, typer.Option(help="Largest request body in bytes (413 above it).")] = 1 << 20,
    forwarded_allow_ips: Annotated[str, typer.Option(
        envvar="TILLER_SERVE_FORWARDED_ALLOW_IPS",
        help="Comma-separated addresses of your reverse proxies, whose X-Forwarded-For/-Proto are believed "
             "(default: none).")] = "",
) -> None:
    """Serve POST /v1/chat/completions, GET /v1/models and GET /health until interrupted."""
    import uvicorn

    from tiller.serve.api import create_app
    from tiller.serve.engine import ChatEngine

    try:
        engine = ChatEngine(model, device=device, model_name=model_name)
    except (OSError, ValueError, RuntimeError) as e:
        # A missing folder, a folder without a model or a bad device string: the user's to fix.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        typer.echo(f"error: cannot load model {model!r}: {first_line}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"serving {engine.model_name!r} on http://{host}:{port}/v1 (device {engine.device})", err=True)
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local client could then log
    # any address it likes (issue #15); as `tiller app serve`, proxy headers only from listed proxies.
    trusted = ",".join(ip.strip() for ip in forwarded_allow_ips.split(",") if ip.strip())
    uvicorn.run(create_app(engine, api_keys=api_key, max_body=max_body), host=host, port=port, log_level="info",
                proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)
