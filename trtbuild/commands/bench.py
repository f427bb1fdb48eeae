"""`trtbuild bench` (offline or online) and `trtbuild report`, on the command line."""

from __future__ import annotations

import click
from click.core import ParameterSource

from trtbuild.cli import emit
from trtbuild.errors import RegressionDetected, TrtbuildError


def _run_line(result, with_path: bool = True) -> str:
    s = result.summary
    lat, tp = s.latency_ms, s.throughput
    line = (f"{s.engine_name} {s.mode} {s.load_label}: {s.counts['succeeded']}/{s.counts['requests']} ok, "
            f"{tp.get('requests_per_s', 0):.3g} req/s, {tp.get('output_tokens_per_s', 0):.4g} out tok/s, "
            f"TTFT p50 {_ms(lat, 'ttft')}, TPOT p50 {_ms(lat, 'tpot')}, ITL/token p50 {_ms(lat, 'itl_token')}")
    if s.slo:
        line += f", goodput {s.slo['goodput_rps']:.3g} req/s"
    if s.counts.get("failed"):
        line += f"\n  failures: {s.counts['failures_by_type']}"
    if not result.valid:
        line += "\n  INVALID: " + "; ".join(s.validity["reasons"])
    note = (s.token_counts.get("prompt") or {}).get("note")
    if note:
        line += "\n  note: " + note
    return line + (f"\n  {result.path}" if with_path else "")


def _ms(latency: dict, metric: str) -> str:
    value = (latency.get(metric) or {}).get("p50")
    return "n/a" if value is None else f"{value:.3g} ms"


@click.command("bench")
@click.argument("engine", required=False)
@click.option("--url", "urls", multiple=True, envvar="TRTBUILD_BENCH_URL",
              help="Online: base URL of an OpenAI-compatible server (repeat to spread load round-robin over "
                   "replicas) [env TRTBUILD_BENCH_URL].")
@click.option("--model", help="Online: the model name to request [default: ENGINE's directory name].")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Online: bearer token [env OPENAI_API_KEY].")
@click.option("--concurrency", multiple=True, help="Closed loop: requests in flight; repeat or 1,4,16 to sweep "
                                                    "[default: 1 unless --request-rate].")
@click.option("--request-rate", multiple=True, help="Open loop: requests/s; repeat or a list to sweep.")
@click.option("--arrival", type=click.Choice(["poisson", "gamma", "constant"]), default="poisson",
              show_default=True, help="Open-loop inter-arrival times.")
@click.option("--burstiness", type=float, default=1.0, show_default=True,
              help="Gamma shape: 1 = Poisson, < 1 burstier, > 1 smoother (needs --arrival gamma).")
@click.option("--num-requests", type=int, default=32, show_default=True, envvar="TRTBUILD_BENCH_NUM_REQUESTS",
              help="Measured requests per load level.")
@click.option("--duration", type=float, default=None, help="Stop sending measured requests after S seconds.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Requests sent first and excluded.")
@click.option("--input-len", type=int, default=128, show_default=True, help="Prompt tokens (BOS included), exact.")
@click.option("--output-len", type=int, default=64, show_default=True, help="Output tokens, exact (ignore_eos).")
@click.option("--dataset", type=click.Path(dir_okay=False), default=None,
              help='JSONL: {"task_id","input_ids","output_tokens"} (trtllm-bench) or {"prompt","output_tokens"}.')
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds prompts and arrivals.")
@click.option("--slo", default=None, envvar="TRTBUILD_SLO", help="Latency targets, e.g. ttft=500,tpot=50,e2e=5000 "
                                                                 "(ms) [env TRTBUILD_SLO].")
@click.option("--endpoint", type=click.Choice(["completions", "chat"]), default="completions", show_default=True,
              envvar="TRTBUILD_BENCH_ENDPOINT",
              help="Online: stream /v1/completions, or /v1/chat/completions with each prompt wrapped as one user "
                   "message; the server applies its chat template, so the input length counted (and made "
                   "exact) is the templated prompt (Mistral v3, BOS included) [env TRTBUILD_BENCH_ENDPOINT].")
@click.option("--prompt-format", type=click.Choice(["text", "ids"]), default="text", show_default=True,
              help="Online, --endpoint completions: send prompts as text or as token-id lists.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Online: per-request timeout (s).")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summaries as JSON.")
@click.pass_obj
def bench_cmd(ws, engine, urls, model, api_key, concurrency, request_rate, arrival, burstiness, num_requests,
              duration, warmup, input_len, output_len, dataset, seed, slo, endpoint, prompt_format, timeout, progress,
              as_json):
    """Benchmark ENGINE offline (in-process), or a server online with --url.

    \b
    Offline: requests go straight into the engine through the generation interface.
    Online: streaming /v1/completions (or /v1/chat/completions with --endpoint chat) against any
    OpenAI-compatible server (ours, trtllm-serve, vLLM, NIM). With both ENGINE and --url, the server is
    taken to serve ENGINE and the runs are stored with it.
    Each load level is one run: <engine>/bench/<run-id>/ (online, foreign model: <workspace>/bench/),
    holding summary.json and requests.jsonl. Output lengths are exact (ignore_eos); a run whose lengths
    differ exits 1. Metric definitions: docs/benchmarks.md. The last line printed is the last run's path.

    \b
      trtbuild bench fp8 --concurrency 1,4,16 --input-len 128 --output-len 64
      trtbuild bench fp16 --request-rate 2 --arrival gamma --burstiness 0.5 --slo ttft=500,tpot=50
      trtbuild bench --url http://127.0.0.1:8000 --model fp8-0123abcd --concurrency 8
      trtbuild bench --url http://127.0.0.1:8000 --model fp8-0123abcd --endpoint chat
    """
    from trtbuild.bench.arrivals import parse_levels, sweep
    from trtbuild.bench.metrics import SLO
    from trtbuild.bench.workload import WorkloadSpec

    loads = sweep(parse_levels(concurrency, "--concurrency", int), parse_levels(request_rate, "--request-rate"),
                  arrival, burstiness, duration, seed)
    if burstiness != 1.0 and arrival != "gamma":
        raise TrtbuildError("--burstiness applies to --arrival gamma only; add --arrival gamma")
    # offline, an --endpoint typed on the command line is a mistake; the env var is a session-wide online
    # default, ignored offline like OPENAI_API_KEY
    given = click.get_current_context().get_parameter_source("endpoint") == ParameterSource.COMMANDLINE
    if not urls and given:
        raise TrtbuildError(f"--endpoint {endpoint} applies to online runs only; add --url URL --model NAME, or drop "
                            "it to benchmark ENGINE offline")
    spec = WorkloadSpec(input_len=input_len, output_len=output_len, dataset=dataset, num_requests=num_requests,
                        warmup=warmup, seed=seed, endpoint=endpoint if urls else None)
    targets = SLO.parse(slo)
    if urls:
        from trtbuild.bench.online import run_online_bench

        engine_dir = ws.resolve_engine(engine) if engine else None
        if not model:
            if engine_dir is None:
                raise TrtbuildError("online runs need --model NAME (the model id the server serves)")
            model = engine_dir.name
        results = run_online_bench(ws, list(urls), model, spec, loads, targets, api_key=api_key,
                                   prompt_format=prompt_format, engine_dir=engine_dir, timeout_s=timeout,
                                   progress=progress)
    else:
        if not engine:
            raise TrtbuildError("give an ENGINE to benchmark offline, or --url URL --model NAME for a server")
        from trtbuild.bench.offline import run_offline_sweep

        results = run_offline_sweep(ws, ws.resolve_engine(engine), spec, loads, targets, progress=progress)
    human = "\n".join(_run_line(r, with_path=r is not results[-1]) for r in results)
    emit({"runs": [dict(r.summary.to_dict(), path=str(r.path)) for r in results]}, human, as_json, results[-1].path)
    wrong = [r for r in results if r.summary.counts.get("flagged", {}).get("length_mismatch")]
    if wrong:
        raise TrtbuildError(f"{len(wrong)} run(s) returned output lengths other than asked with ignore_eos "
                            f"(see {wrong[0].path}/requests.jsonl, flag length_mismatch); the numbers are not "
                            "comparable: check that the server honours ignore_eos and min_tokens")


@click.command("report")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--baseline", multiple=True, help="A run (or engine, or directory of runs) to compare with; "
                                                 "regressions beyond --tolerance exit with code 4.")
@click.option("--tolerance", type=float, default=5.0, show_default=True, envvar="TRTBUILD_TOLERANCE",
              help="Allowed change against the baseline, in percent [env TRTBUILD_TOLERANCE].")
@click.option("--slo", default=None, envvar="TRTBUILD_SLO", help="Latency targets for goodput and selection, "
                                                                 "e.g. ttft=500,tpot=50 (ms) [env TRTBUILD_SLO].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report directory [default: <workspace>/reports/<id>].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def report_cmd(ws, inputs, baseline, tolerance, slo, out, as_json):
    """Markdown + HTML report (plots inlined) over RUN_OR_ENGINE..., and the engine to ship.

    \b
    Each input is a run directory, a directory of runs, or an engine (all its runs). The selected
    engine is the one with the highest goodput under --slo among those that passed validation.
    The last line printed is the HTML report's path.

    \b
      trtbuild report fp16 fp8 --slo ttft=500,tpot=60
      trtbuild report fp8 --baseline runs/last-release --tolerance 5      # exit 4 on a regression
    """
    from trtbuild.bench.metrics import SLO
    from trtbuild.report.render import make_report

    result = make_report(ws, list(inputs), SLO.parse(slo), list(baseline) or None, tolerance, out)
    lines = [f"selected: {result.selected_engine or 'none'} ({result.selection.reason})"]
    lines += [f"  {name}: {why}" for name, why in result.selection.losers.items()]
    lines += [f"REGRESSION {r['engine']} {r['metric']}: {r['baseline']:.4g} -> {r['current']:.4g} "
              f"({r['change_pct']:+.1f}%)" for r in result.regressions]
    lines.append(str(result.path_md))
    emit(result.to_dict(), "\n".join(lines), as_json, result.path_html)
    if result.regressions:
        raise RegressionDetected(f"{len(result.regressions)} metric(s) regressed beyond {tolerance:g}% against the "
                                 f"baseline; see {result.path_html}")
