"""Reports: plots (matplotlib), Markdown + self-contained HTML, engine selection, baseline comparison.

    from trtbuild.report import make_report
    result = make_report(ws, ["fp16", "fp8"], slo=SLO.parse("ttft=500,tpot=60"))
"""


def make_report(*args, **kwargs):
    from trtbuild.report.render import make_report as make

    return make(*args, **kwargs)


__all__ = ["make_report"]
