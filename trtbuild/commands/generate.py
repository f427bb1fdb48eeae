"""`trtbuild generate`: try an engine on one prompt."""

from __future__ import annotations

import json

import click


@click.command("generate")
@click.argument("engine")
@click.option("--prompt", "-p", required=True, help="The prompt text.")
@click.option("--chat", is_flag=True,
              help="Encode the prompt as one user message in Mistral's v3 chat format ([INST] ... [/INST]).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, envvar="TRTBUILD_MAX_TOKENS",
              help="Most tokens to generate [env TRTBUILD_MAX_TOKENS].")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass, in (0, 1].")
@click.option("--seed", type=int, default=None, help="Seed for sampling: the same seed gives the same text.")
@click.option("--stop", multiple=True, help="Stop string (repeatable); it is not part of the output.")
@click.option("--stream", is_flag=True, help="Print the text as it is generated.")
@click.option("--device", envvar="TRTBUILD_DEVICE", default=None,
              help="Torch engines: cpu or cuda [env TRTBUILD_DEVICE; default: cuda when present].")
@click.option("--json", "as_json", is_flag=True, help="Print the GenerationResult as JSON.")
@click.pass_obj
def generate_cmd(ws, engine, prompt, chat, max_tokens, temperature, top_p, seed, stop, stream, device, as_json):
    """Generate a completion of --prompt with ENGINE and print it, then tokens, tok/s and TTFT.

    \b
    ENGINE is an engine directory, or a variant (fp16, fp8, fp8-kv8) or key prefix in the workspace.

    \b
      trtbuild generate fp16 --chat -p "What is the capital of France?"
      trtbuild generate fp8 -p "Once upon a time" --temperature 0.8 --seed 1 --stream
      trtbuild generate fp16 --chat -p "Count to ten" --stop "5" --json
    """
    from trtbuild.errors import TrtbuildError
    from trtbuild.runtime import load_engine
    from trtbuild.runtime.interface import EngineError, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=list(stop))
    try:
        params.check()
    except ValueError as exc:
        raise TrtbuildError(f"bad option: {exc}") from None
    engine_dir = ws.resolve_engine(engine)
    with load_engine(engine_dir, device=device) as runner:
        tokenizer = runner.tokenizer
        ids = tokenizer.encode_chat([{"role": "user", "content": prompt}]) if chat else tokenizer.encode(prompt)
        try:
            request = runner.submit(ids, params)
        except (ValueError, EngineError) as exc:  # too long for the engine, or the engine is down
            raise TrtbuildError(str(exc)) from None
        try:
            if stream and not as_json:
                for event in request:
                    click.echo(event.text, nl=False)
                click.echo()
            result = request.result()
        except KeyboardInterrupt:
            request.cancel()
            raise
    if result.finish_reason == "error":
        raise TrtbuildError(f"generation failed: {result.error}")
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    if not stream:
        click.echo(result.text)
    click.echo(stats_line(result, runner.info))


def stats_line(result, info) -> str:
    """gpt-fast style: how many tokens, how fast, how soon the first one came."""
    t = result.timings
    total_s = max(t.finished_ns - t.arrival_ns, 1) / 1e9
    ttft_ms = (t.first_token_ns - t.arrival_ns) / 1e6 if t.first_token_ns else float("nan")
    n = len(result.token_ids)
    return (f"[{n} tokens in {total_s:.2f} s: {n / total_s:.1f} tok/s, TTFT {ttft_ms:.0f} ms, "
            f"{len(result.prompt_token_ids)} prompt tokens, finish {result.finish_reason}; "
            f"{info.name}, {info.backend} backend, {info.precision.get('weights', '?')} weights]")
