"""What the CLI prints, on recorded data: the demo's before/after table, job tables, the progress line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from layerprune.api.schemas import JobCreate
from layerprune.cli import main
from layerprune.cli.demo import demo_spec
from layerprune.cli.progress import ProgressView
from layerprune.cli.render import (
    comparison_table,
    human_bytes,
    human_count,
    human_duration,
    jobs_table,
    metric_pairs,
    summary_table,
)
from layerprune.client import Event, Job, _parse_sse

DATA = Path(__file__).parent / "data"


def recorded() -> dict:
    """The job object of a real `layerprune demo` run (bundled SmolLM2, 2 CPU cores)."""
    return json.loads((DATA / "demo_job.json").read_text())


def test_summary_table_of_the_recorded_demo() -> None:
    job = recorded()
    text = summary_table(job["result"], job.get("artifacts", []))
    lines = text.splitlines()
    assert lines[0].split() == ["before", "after", "change"]
    footer = [ln for ln in lines if ln.startswith(("tasks:", "removed layers"))]
    rows = {ln.split("  ")[0].strip(): ln for ln in lines[2:] if ln not in footer}
    limit = job["spec"]["evaluate"]["limit"]
    assert footer[0].startswith(f"tasks: zero-shot accuracy on the first {limit} examples of each")
    assert rows["layers"].split()[1:] == ["30", "23", "-7"]
    assert "134.5M" in rows["parameters"]
    assert "%" in rows["size on disk"]
    names = list(rows)
    # perplexity first, then every task's acc and acc_norm, before and after
    assert any("perplexity" in n for n in names[3:4])
    for task in job["spec"]["evaluate"]["tasks"]:
        assert any(n.startswith(task) and n.endswith(" acc") for n in names), task
        assert any(n.startswith(task) and n.endswith("acc_norm") for n in names), task
    for name, line in rows.items():
        if name not in ("layers", "parameters", "size on disk"):
            assert len(line.split()) >= len(name.split()) + 3, line  # before, after and change filled
    assert "stderr" not in text and "delta" not in text
    removed = job["result"]["removed_layers"]
    assert text.splitlines()[-1] == "removed layers (original numbering): " + ", ".join(map(str, removed))


def test_metric_pairs_accepts_both_nestings() -> None:
    by_side = {
        "before": {"perplexity": 20.0, "tasks": {"piqa": {"acc": 0.6, "acc_stderr": 0.01}}},
        "after": {"perplexity": 30.0, "tasks": {"piqa": {"acc": 0.55}}},
        "deltas": {"perplexity": 10.0},
    }
    by_metric = {
        "perplexity": {"before": 20.0, "after": 30.0},
        "piqa": {"acc": {"before": 0.6, "after": 0.55}},
    }
    expected = {"perplexity": (20.0, 30.0), "piqa acc": (0.6, 0.55)}
    assert metric_pairs(by_side) == expected
    assert metric_pairs(by_metric) == expected
    assert metric_pairs({"perplexity": 12.5}) == {"perplexity": (None, 12.5)}  # evaluate-only
    assert metric_pairs(None) == {}


def test_summary_table_without_evaluation() -> None:
    text = summary_table(
        {
            "num_layers_before": 8,
            "num_layers_after": 6,
            "params_before": 2_000_000,
            "params_after": 1_500_000,
            "removed_layers": [6, 7],
            "metrics": {},
        },
        [{"path": "model.safetensors", "size_bytes": 6_000_000}],
    )
    assert "-25.0%" in text and "6.0 MB" in text and "removed layers (original numbering): 6, 7" in text


def test_human_units() -> None:
    assert human_count(134_515_008) == "134.5M" and human_count(999) == "999" and human_count(None) == "-"
    assert human_bytes(269_060_000) == "269.1 MB" and human_bytes(12) == "12 B"
    assert human_duration(65) == "1:05" and human_duration(3725) == "1:02:05" and human_duration(None) == "-"


def test_jobs_table() -> None:
    text = jobs_table(
        [
            {
                "id": "job_1",
                "status": "running",
                "stage": "finetune",
                "progress": 0.42,
                "created_at": "2026-11-28T10:00:00Z",
                "metadata": {"a": "b"},
            }
        ]
    )
    header, rule, row = text.splitlines()
    assert header.split() == ["ID", "STATUS", "STAGE", "PROGRESS", "CREATED", "METADATA"]
    assert row.split() == ["job_1", "running", "finetune", "42%", "2026-11-28T10:00:00Z", "a=b"]


def test_progress_view_draws_events_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)
    view.on_job(Job.from_dict({"id": "job_1", "status": "running", "stage": "finetune", "progress": 0.4}))
    view.on_event(
        Event.from_dict(
            {
                "id": "evt_1",
                "type": "progress",
                "message": "step 10",
                "data": {
                    "stage": "finetune",
                    "done": 10,
                    "total": 40,
                    "stage_progress": 0.25,
                    "loss": 2.5,
                    "tokens_per_s": 1500,
                    "eta_s": 90,
                },
            }
        )
    )
    line = view.line()
    assert line.startswith("finetune") and "[#######" in line and " 25%" in line
    assert "10/40" in line and "loss 2.500" in line and "1.5k tok/s" in line and "ETA 1:30" in line
    assert "job 40%" in line
    view.on_event(
        Event.from_dict({"id": "evt_2", "type": "warning", "level": "warning", "message": "slow disk"})
    )
    view.close()
    text = out.getvalue()
    assert "\r\x1b[2KWARNING: slow disk\n" in text  # printed above the bar, which is redrawn after it
    assert text.endswith("\n")


def test_progress_view_labels_the_bar_with_stage_part_and_task_and_holds_the_job_share() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=True)

    def progress(i: int, data: dict) -> None:
        view.on_event(Event.from_dict({"id": f"evt_{i}", "type": "progress", "data": {"stage": "evaluate", **data}}))

    progress(1, {"part": "before", "task": "perplexity", "done": 8, "total": 16, "stage_progress": 0.1,
                 "progress": 0.75})
    assert view.line().startswith("evaluate · before · perplexity  [")
    progress(2, {"part": "after", "task": "piqa", "task_done": 12, "task_total": 25, "done": 30, "total": 75,
                 "stage_progress": 0.7, "progress": 0.72})
    line = view.line()
    assert line.startswith("evaluate · after · piqa 12/25  [") and "30/75" not in line
    assert "job 75%" in line  # 72% after 75% is not shown: the job's share never goes back
    # A log event between bars is a sentence naming its model, printed above the redrawn bar.
    view.on_event(Event.from_dict({"id": "evt_3", "type": "log", "message": "after: perplexity 41.50 on 16 windows"}))
    assert "\r\x1b[2Kafter: perplexity 41.50 on 16 windows\n" in out.getvalue()
    view.on_event(Event.from_dict({"id": "evt_4", "type": "stage", "message": "stage export", "data": {"stage": "export"}}))
    assert view.line().startswith("export ")


def test_progress_view_in_a_log_prints_lines_not_carriage_returns() -> None:
    out = io.StringIO()
    view = ProgressView(out, tty=False, log_every=3600)
    view.on_event(
        Event.from_dict(
            {"id": "evt_1", "type": "stage", "message": "stage prune", "data": {"stage": "prune"}}
        )
    )
    for step in range(5):
        view.on_event(
            Event.from_dict({"id": f"evt_{step}", "type": "progress", "data": {"done": step, "total": 5}})
        )
    text = out.getvalue()
    assert "\r" not in text and "stage prune" in text
    assert text.count("[") <= 2  # rate-limited: one progress line, not one per event


def test_sse_parser() -> None:
    body = [
        "retry: 2000",
        "",
        ": keep-alive",
        "",
        "id: evt_1",
        "event: stage",
        'data: {"id": "evt_1", "type": "stage", "message": "stage prune"}',
        "",
        "event: end",
        'data: {"status": "succeeded"}',
        "",
    ]
    events = list(_parse_sse(iter(body)))
    assert [(e.id, e.type) for e in events] == [("evt_1", "stage"), ("", "end")]
    assert events[0].message == "stage prune"


def test_demo_specs_are_the_recommended_and_the_papers_recipe_and_valid() -> None:
    # Request bodies: the spec and the service fields (metadata).
    rec = JobCreate.model_validate(demo_spec("recommended"))
    paper = JobCreate.model_validate(demo_spec("paper"))
    for parsed in (rec, paper):
        assert parsed.model == "bundled:smollm2-135m-instruct"
        assert parsed.prune is not None and parsed.prune.num_layers == 7
        assert parsed.finetune is not None and parsed.finetune.method == "partial"
        assert parsed.finetune.max_seq_len == 256
        assert parsed.evaluate is not None and parsed.evaluate.limit and parsed.evaluate.compare_base
        assert {"arc_easy", "piqa", "hellaswag"} <= set(parsed.evaluate.tasks)
        assert parsed.evaluate.perplexity is not None and parsed.evaluate.perplexity.dataset == "bundled:wikipedia-eval"
        assert parsed.evaluate.samples is not None and parsed.evaluate.samples.prompts == ["What is the capital of France?"]
    # The same healing budget for both: the comparison is of recipes, not of budgets.
    assert (rec.finetune.max_steps, rec.finetune.batch_size) == (paper.finetune.max_steps, paper.finetune.batch_size)
    assert rec.prune.metric == "angular" and rec.prune.replace.method == "linear"
    assert rec.finetune.objective == "distill" and rec.finetune.format == "text"
    # The bench's best recipe heals every layer after the cut; the paper's heals the last 3.
    assert (rec.finetune.trainable_last_layers, paper.finetune.trainable_last_layers) == (11, 3)
    assert paper.prune.metric == "reverse_order" and paper.finetune.objective == "lm"
    assert paper.finetune.dataset == "bundled:instructions" and paper.finetune.format == "alpaca"
    with pytest.raises(ValueError):
        demo_spec("nosuch")


def test_demo_help_and_print_spec(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "--max-steps" in out and "embedded default" in out and "--recipes" in out
    assert main(["demo", "--print-spec", "--max-steps", "5", "--tasks", "piqa", "--recipes", "paper"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["finetune"]["max_steps"] == 5 and spec["evaluate"]["tasks"] == ["piqa"]
    assert main(["demo", "--print-spec"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"recommended", "paper"}
    assert main(["demo", "--print-spec", "--recipes", "best"]) == 2


def test_comparison_table_puts_the_base_and_each_result_side_by_side() -> None:
    rec = recorded()["result"]
    prompt = "What is the capital of France?"
    rec["metrics"]["before"]["samples"] = [{"prompt": prompt, "text": "The capital of France is Paris."}]
    rec["metrics"]["after"]["samples"] = [{"prompt": prompt, "text": "Paris."}]
    other = json.loads(json.dumps(rec))
    other["metrics"]["after"]["perplexity"]["value"] = 2 * rec["metrics"]["before"]["perplexity"]["value"]
    text = comparison_table([("recommended", rec), ("paper", other)])
    lines = text.splitlines()
    assert lines[0].split() == ["dense", "recommended", "paper"]
    rows = {ln.split("  ")[0].strip(): ln for ln in lines[2:]}
    assert rows["layers"].split()[1:] == ["30", "23", "23"]
    assert rows["parameters"].split()[1:] == [human_count(134515008), human_count(rec["metrics"]["after"]["params"]),
                                              human_count(rec["metrics"]["after"]["params"])]
    assert rows["perplexity"].endswith("(+100.0%)")
    accs = [rec["metrics"]["before"]["tasks"][t]["acc"] for t in ("arc_easy", "piqa", "hellaswag")]
    assert rows["mean acc"].split()[2] == f"{sum(accs) / 3:.3f}"
    assert f"prompt: {prompt}" in text and "  dense:       The capital of France is Paris." in text
    assert "  paper:       Paris." in text


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("serve", "worker", "migrate", "keys", "submit", "jobs", "download", "files", "demo"):
        assert command in out
