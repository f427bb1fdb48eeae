"""`trtbuild bench` (offline or online) and `trtbuild report`, on the command line."""

from __future__ import annotations

import click
from click.core import ParameterSource

from trtbuild.cli import emit
from trtbuild.commands import progress_bars
from trtbuild.errors import RegressionDetected, TrtbuildError


def _run_line(result, with_path: bool = True) -> str:
    from trtbuild.bench.trials import result_intervals

    s = result.summary
    iv = result_intervals(result)
    trials = f" ({s.num_trials} trials, mean +- 95% CI)" if s.num_trials > 1 else ""
    line = (f"{s.engine_name} {s.mode} {s.load_label}{trials}: {s.counts['succeeded']}/{s.counts['requests']} ok, "
            f"{iv['requests_per_s'].text()} req/s, {iv['output_tokens_per_s'].text(4)} out tok/s, "
            f"TTFT p50 {_ms(iv, 'ttft_p50')}, TPOT p50 {_ms(iv, 'tpot_p50')}, ITL/token p50 {_ms(iv, 'itl_token_p50')}")
    if s.slo:
        line += f", goodput {iv['goodput_rps'].text()} req/s"
    cv = iv["output_tokens_per_s"].cv
    if cv is not None:
        line += f", CV {cv:.1%}"
    if s.counts.get("failed"):
        line += f"\n  failures: {s.counts['failures_by_type']}"
    if not result.valid:
        line += "\n  INVALID: " + "; ".join(s.validity["reasons"])
    if s.sample_check and s.sample_check.get("flags"):
        line += "\n  too few samples: " + "; ".join(s.sample_check["flags"])
    if (s.environment or {}).get("busy"):
        line += f"\n  warning: the machine was busy during trial(s) {s.environment['busy_trials']}"
    note = (s.token_counts.get("prompt") or {}).get("note")
    if note:
        line += "\n  note: " + note
    return line + (f"\n  {result.path}" if with_path else "")


def _ms(intervals: dict, key: str) -> str:
    interval = intervals.get(key)
    return "n/a" if interval is None or interval.mean is None else f"{interval.text()} ms"


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
@click.option("--trials", type=click.IntRange(min=1), default=1, show_default=True, envvar="TRTBUILD_BENCH_TRIALS",
              help="Run each load level N times (levels interleaved) and report mean +- 95% Student-t interval and "
                   "CV over the trials; 3+ for decisions [env TRTBUILD_BENCH_TRIALS].")
@click.option("--warmup", type=int, default=2, show_default=True, help="Requests sent first and excluded.")
@click.option("--input-len", type=int, default=128, show_default=True, help="Prompt tokens (BOS included), exact.")
@click.option("--output-len", type=int, default=64, show_default=True, help="Output tokens, exact (ignore_eos).")
@click.option("--dataset", type=click.Path(dir_okay=False), default=None,
              help='JSONL: {"task_id","input_ids","output_tokens"} (trtllm-bench) or {"prompt","output_tokens"}.')
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds prompts and arrivals.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              envvar="TRTBUILD_BENCH_TEMPERATURE",
              help="Sampling temperature of every request: 0 = greedy, 1.0 = OpenAI's default; recorded with the "
                   "run [env TRTBUILD_BENCH_TEMPERATURE].")
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
@click.option("--client-workers", default="auto", show_default=True, envvar="TRTBUILD_BENCH_CLIENT_WORKERS",
              help="Online: client processes sharing each load level, each with its own event loop and self-checks "
                   "(auto: one per 128 streams of the highest --concurrency, at most one per usable CPU; open "
                   "loop: 1) [env TRTBUILD_BENCH_CLIENT_WORKERS].")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr  [default: on a terminal, off in a log].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summaries as JSON.")
@click.pass_obj
def bench_cmd(ws, engine, urls, model, api_key, concurrency, request_rate, arrival, burstiness, num_requests,
              duration, trials, warmup, input_len, output_len, dataset, seed, temperature, slo, endpoint, prompt_format,
              timeout, client_workers, progress, as_json):
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
    if progress is None:
        progress = progress_bars(as_json)
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
    from trtbuild.bench.workers import parse_workers

    parse_workers(client_workers)  # a bad value fails before anything runs, online or not
    if not urls and click.get_current_context().get_parameter_source("client_workers") == ParameterSource.COMMANDLINE:
        raise TrtbuildError("--client-workers applies to online runs only (offline, the engine stamps its own "
                            "tokens); add --url URL --model NAME, or drop it")
    spec = WorkloadSpec(input_len=input_len, output_len=output_len, dataset=dataset, num_requests=num_requests,
                        warmup=warmup, seed=seed, endpoint=endpoint if urls else None, temperature=temperature)
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
                                   progress=progress, trials=trials, client_workers=client_workers)
    else:
        if not engine:
            raise TrtbuildError("give an ENGINE to benchmark offline, or --url URL --model NAME for a server")
        from trtbuild.bench.offline import run_offline_sweep

        results = run_offline_sweep(ws, ws.resolve_engine(engine), spec, loads, targets, progress=progress,
                                    trials=trials)
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
    Each input is a run directory, a directory of runs, or an engine (all its runs). Among engines
    that passed validation, one wins only when its goodput under --slo beats the others beyond noise
    (Welch 95% interval over trials); otherwise it is a tie within noise, broken by accuracy, then
    memory. Against --baseline, a metric regresses (exit 4) only when its change exceeds --tolerance
    with 95% confidence; "inconclusive: run more trials" when the interval straddles it.
    The last line printed is the HTML report's path.

    \b
      trtbuild report fp16 fp8 --slo ttft=500,tpot=60
      trtbuild report fp8 --baseline runs/last-release --tolerance 5      # exit 4 on a regression
    """
    from trtbuild.bench.metrics import SLO
    from trtbuild.report.render import make_report

    result = make_report(ws, list(inputs), SLO.parse(slo), list(baseline) or None, tolerance, out)
    lines = [f"selected: {result.selected_engine or 'none'} ({result.selection.decision}): {result.selection.reason}"]
    lines += [f"  {name}: {why}" for name, why in result.selection.losers.items()]
    lines += [f"  note: {note}" for note in result.selection.notes]
    lines += [("REGRESSION " if r["verdict"] == "regression" else "") + r["evidence"]
              for r in result.comparison if r["verdict"] != "ok"]
    if result.comparison:
        ok = sum(r["verdict"] == "ok" for r in result.comparison)
        lines.append(f"baseline: {len(result.regressions)} regression(s), "
                     f"{sum(r['verdict'] == 'inconclusive' for r in result.comparison)} inconclusive, {ok} ok")
    lines.append(str(result.path_md))
    emit(result.to_dict(), "\n".join(lines), as_json, result.path_html)
    if result.regressions:
        raise RegressionDetected(f"{len(result.regressions)} metric(s) regressed beyond {tolerance:g}% against the "
                                 f"baseline with 95% confidence; see {result.path_html}")
