import json
import re

import numpy as np
import pytest
from matplotlib.image import imread

from tiller.eval.report import (
    elo_rows,
    final_policy,
    headline_metrics,
    pick_samples,
    report_cmd,
    write_report,
)
from tiller.eval.results import RunResults, Sample
from tiller.world.judge import METADATA

PNGS = ["winrates.png", "family_scores.png", "overoptimisation.png", "training.png", "elo.png", "calibration.png"]
DPI = 110  # the report's savefig resolution
# figure size in inches of each plot of FULL (None: depends on the layout), worked out from tiller.eval.report:
# 3 families, 4 training metrics (2 rows of 3.2 in), 3 Elo rows (0.4 in each + 1.2 in)
SIZES = {"winrates.png": (7, None), "family_scores.png": (6, 3.6), "overoptimisation.png": (10, 3.8),
         "training.png": (10, 6.4), "elo.png": (6, 2.4), "calibration.png": (4.6, 4.4)}


def check_png(path, size) -> np.ndarray:
    """The file decodes as an image of about the figure's size (bbox_inches="tight" trims or grows the margins a
    little) and is not blank: a good share of its pixels differ from the background, in many colours."""
    img = imread(path)
    h, w = img.shape[:2]
    assert 0.85 * size[0] * DPI <= w <= 1.05 * size[0] * DPI, (path.name, w)
    if size[1] is not None:
        assert 0.85 * size[1] * DPI <= h <= 1.1 * size[1] * DPI, (path.name, h)
    rgb = img[..., :3]
    drawn = np.abs(rgb - rgb[0, 0]).sum(-1) > 0.05  # differs from the corner (background) colour
    assert drawn.mean() > 0.03, (path.name, drawn.mean())
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50, path.name  # lines, text and fills, not one flat fill
    return img


def table_after(html: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The header cells and the body rows (cell texts) of the first table after ``heading``."""
    table = html[html.index(heading):].split("</table>")[0]
    head = re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in table.split("<tbody>")[1].split("</tr>")[:-1]]
    return head, rows


def ev(score, refusal, halluc, loss, samples=()):
    fam = {"arithmetic": {"score": score, "correct": 0.5},
           "harmful": {"score": score - 0.5, "correct": 1 - refusal, "refusal_rate": refusal},
           "facts": {"score": score - 0.2, "correct": 0.4, "hallucination_rate": halluc}}
    return {"per_family": fam, "samples": list(samples),
            "overall": {"score": score, "correct": 0.5, "refusal_rate": refusal, "hallucination_rate": halluc,
                        "pretrain_loss": loss}}


def wr(rate, lo, hi):
    return {"arithmetic": {"rate": 0.6, "lo": 0.45, "hi": 0.75, "n": 40, "ties": 0.1},
            "overall": {"rate": rate, "lo": lo, "hi": hi, "n": 120, "ties": 0.05}}


SFT_SAMPLES = [{"family": "arithmetic", "prompt": "What is 2 + 2?", "response": "2 + 2 = 5.", "score": 1.0},
               {"family": "facts", "prompt": [{"role": "user", "content": "Where was Mira born?"}],
                "response": "In Kest & Lorn.", "score": 2.0}]
FINAL_SAMPLES = [{"family": "arithmetic", "prompt": "What is 2 + 2?",
                  "response": "<script>alert('x')</script> 2 + 2 = 4.", "score": 2.5},
                 {"family": "facts", "prompt": [{"role": "user", "content": "Where was Mira born?"}],
                  "response": "Mira was born in Kest.", "score": 2.5}]

FULL = {
    "run": "demo<1>", "created": "2025-01-01T00:00:00", "seconds_total": 1100.0,
    "stage_seconds": {"pretrain": 300.0, "sft": 60.0, "rm-r1": 40.0, "ppo-r1": 500.0},
    # named as tiller.pipeline names them: "final" is an alias of the last round's folder
    "policies": {"base": "runs/demo/base", "sft": "runs/demo/sft", "ppo-ptx-r1": "runs/demo/policy-r1",
                 "ppo-noptx-r1": "runs/demo/policy-noptx-r1", "ppo-ptx-r2": "runs/demo/policy-r2",
                 "final": "runs/demo/policy-r2"},
    "evals": {"base": ev(0.8, 0.1, 0.6, 2.10), "sft": ev(1.5, 0.4, 0.30, 2.20, SFT_SAMPLES),
              "ppo-ptx-r1": ev(1.8, 0.75, 0.15, 2.25), "ppo-noptx-r1": ev(1.9, 0.7, 0.2, 2.60),
              "ppo-ptx-r2": ev(2.0, 0.8, 0.125, 2.24, FINAL_SAMPLES), "final": ev(2.0, 0.8, 0.125, 2.24, FINAL_SAMPLES)},
    "win_rates": {"final vs sft": wr(0.725, 0.64, 0.81), "final vs base": wr(0.9, 0.85, 0.95),
                  "ppo vs ppo-ptx": wr(0.52, 0.43, 0.61)},
    "elo": {"base": 1000.0, "sft": 1150.0, "ppo-ptx-r2": 1260.0},
    "elo_intervals": {"base": [1000.0, 1000.0], "sft": [1100.0, 1200.0], "ppo-ptx-r2": [1200.0, 1320.0]},
    "curves": {"ppo-ptx-r1": [{"iteration": i, "episodes": 64 * i, "kl": 0.5 * i, "rm_score": 0.3 * i,
                           "gold_score": 1.5 + 0.2 * i - 0.03 * i * i} for i in range(8)],
               "bon": [{"n": n, "kl": kl, "rm_score": 0.2 * kl, "gold_score": 1.5 + 0.1 * kl,
                        "oracle_gold_score": 1.5 + 0.4 * kl}
                       for n, kl in ((1, 0.0), (2, 0.193), (4, 0.636), (8, 1.204), (16, 1.835))]},
    "rm": {"r1": {"eval/accuracy": 0.74, "gold_accuracy": 0.8, "data/labeler_agreement": 0.75,
                  "calibration": [{"bin": b, "n": 10 + b, "predicted": 0.1 + 0.2 * b, "observed": 0.15 + 0.18 * b}
                                  for b in range(5)]},
           "r2": {"eval/accuracy": 0.71, "gold_accuracy": 0.83, "data/labeler_agreement": 0.73}},
    "headroom": {"policy": "sft", "rm": "rm-r2", "rows": [
        {"n": 1, "kl": 0.0, "rm": {"rate": 0.51, "lo": 0.46, "hi": 0.56}, "gold": {"rate": 0.51, "lo": 0.46, "hi": 0.56}},
        {"n": 4, "kl": 0.636, "rm": {"rate": 0.573, "lo": 0.52, "hi": 0.62},
         "gold": {"rate": 0.689, "lo": 0.64, "hi": 0.74}}]},
    "training": {"ppo-policy-r1": [{"step": s, "objective/score": 0.1 * s, "objective/kl": 0.05 * s,
                             "loss/policy": -0.01 * s, "policy/entropy": 2 - 0.1 * s} for s in range(10)]},
}


def test_full_report(tmp_path):
    html_path = write_report(RunResults.from_dict(FULL), tmp_path)
    assert html_path == tmp_path / "report.html"
    html = html_path.read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(PNGS)
    images = [check_png(tmp_path / png, SIZES[png]) for png in PNGS]
    for i, a in enumerate(images):  # six different plots, not one saved six times
        assert all(a.shape != b.shape or not np.array_equal(a, b) for b in images[i + 1:]), PNGS[i]
    assert sorted(re.findall(r'<img src="([^"]*)"', html)) == sorted(PNGS)  # each plot shown once, no other
    # the tables hold the given results in the right cells
    assert table_after(html, "<h3>final vs sft</h3>") == (
        ["family", "win rate", "95% CI", "n", "ties"],
        [["arithmetic", "60.0%", "[45.0%, 75.0%]", "40", "10.0%"], ["overall", "72.5%", "[64.0%, 81.0%]", "120", "5.0%"]])
    head, rows = table_after(html, "<h2>Policies</h2>")
    assert head == ["policy", "gold score", "correct", "refusal rate", "hallucination rate", "pretraining loss", "Elo"]
    assert rows[1] == ["sft", "1.500", "50.0%", "40.0%", "30.0%", "2.200", "1150"]
    assert rows[-1] == ["ppo-ptx-r2", "2.000", "50.0%", "80.0%", "12.5%", "2.240", "1260"]
    assert [r[0] for r in rows] == ["base", "sft", "ppo-ptx-r1", "ppo-noptx-r1", "ppo-ptx-r2"]
    assert table_after(html, "<h2>Reward models</h2>") == (
        ["round", "accuracy on held-out labels", "labeler agreement", "gold accuracy"],
        [["r1", "74.0%", "75.0%", "80.0%"], ["r2", "71.0%", "73.0%", "83.0%"]])
    # headline: win rates, refusal / hallucination vs SFT, alignment tax, Elo
    assert "72.5%" in html and "[64.0%, 81.0%]" in html and "90.0%" in html
    assert "12.5%" in html and "SFT 30.0%" in html and "SFT 40.0%" in html
    # alignment tax: SFT / PPO without ptx / PPO-ptx of the same round
    assert "2.200 / 2.600 / 2.250" in html and "PPO-ptx (ppo-ptx-r1)" in html
    assert "1260" in html
    # RM table and timings
    assert "74.0%" in html and "75.0%" in html and "83.0%" in html and "1,100" in html
    # text is escaped everywhere: the sample answer, the run name, an ampersand
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "demo&lt;1&gt;" in html and "Kest &amp; Lorn." in html
    # the same prompt is shown with both answers in one row
    row = html[html.index("What is 2 + 2?"):].split("</tr>")[0]
    assert "2 + 2 = 5." in row and "2 + 2 = 4." in row

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["win_rate/final_vs_sft"] == 0.725 and metrics["win_rate/final_vs_base"] == 0.9
    assert metrics["win_rate/final_vs_sft_lo"] == 0.64 and metrics["win_rate/ppo_vs_ppo-ptx"] == 0.52
    assert metrics["refusal_rate/sft"] == 0.4 and metrics["refusal_rate/final"] == 0.8
    assert metrics["hallucination_rate/final"] == 0.125 and metrics["pretrain_loss/ppo-noptx-r1"] == 2.6
    assert metrics["elo/final"] == 1260.0 and metrics["rm/r1/labeler_agreement"] == 0.75
    assert metrics["headroom/rm_best_of_4_vs_sft"] == 0.573 and metrics["headroom/gold_best_of_4_vs_sft"] == 0.689
    # the headroom table: one row per n, the RM's pick beside the gold judge's
    head = html[html.index("Headroom: best-of-n"):].split("</table>")[0]
    assert "picked by rm-r2" in head and "57.3% [52.0%, 62.0%]" in head and "68.9% [64.0%, 74.0%]" in head
    assert all(isinstance(v, float) for v in metrics.values())
    # the "final" alias is not shown twice: one policy row and one bar per real policy
    table = html[html.index("<h2>Policies</h2>"):html.index("<h3>Gold score per family")]
    assert table.count("<tr><td>ppo-ptx-r2</td>") == 1 and "<tr><td>final</td>" not in table
    assert "<th>ppo-ptx-r2</th>" in html and "<th>final</th>" not in html


def test_sparse_report_degrades(tmp_path):
    results = {"run": "tiny", "evals": {"sft": {"overall": {"score": 1.2, "refusal_rate": float("nan")}}},
               "win_rates": {"final vs sft": {"overall": {"rate": 0.55}}}, "curves": {"bon": []},
               "headroom": {"rows": [{"n": 2, "rm": "bad"}, "junk"]},
               "training": {"ppo-policy-r1": [{"step": 1}]}, "rm": {"r1": {"calibration": "oops"}}}
    html = write_report(RunResults.from_dict(results), tmp_path).read_text()
    assert "55.0%" in html and "<h2>Stage timings</h2>" not in html
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["winrates.png"]
    check_png(tmp_path / "winrates.png", (7, None))
    assert re.findall(r'<img src="([^"]*)"', html) == ["winrates.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"win_rate/final_vs_sft": 0.55, "score/sft": 1.2}  # NaN left out, valid JSON

    only_final = {"evals": {"ppo-r1": {"samples": [{"family": "style", "prompt": "Hi <b>", "response": "Hello."}]}}}
    html = write_report(RunResults.from_dict(only_final), tmp_path / "only-final").read_text()
    assert "<th>ppo-r1 (gold score)</th>" in html and "Hi &lt;b&gt;" in html and "SFT (gold" not in html

    # intervals that do not contain the rating (another anchor) are dropped, not drawn with negative error bars
    shifted = RunResults.from_dict({"elo": {"a": 1000.0, "b": 900.0},
                                    "elo_intervals": {"a": [1040.0, 1060.0], "b": [930.0, 990.0]}})
    assert elo_rows(shifted) == [("a", 1000.0, None, None), ("b", 900.0, None, None)]
    assert (write_report(shifted, tmp_path / "shifted").parent / "elo.png").is_file()

    empty = tmp_path / "empty"
    html = write_report(RunResults(), empty).read_text()
    assert "No evaluation results." in html and json.loads((empty / "metrics.json").read_text()) == {}


def test_final_policy_choice():
    def final(d):
        return final_policy(RunResults.from_dict(d))

    assert final(FULL) == "ppo-ptx-r2"
    assert final({"policies": {"sft": "s", "final": "elsewhere"}, "evals": {"final": {}}}) == "final"
    assert final({"evals": {"sft": {}, "ppo-r10": {}, "ppo-r9": {}}}) == "ppo-r10"
    assert final({"evals": {"sft": {}, "ppo-noptx-r1": {}, "bon-r1": {}}}) == "bon-r1"
    assert final({"final": "mine", "evals": {"ppo-r1": {}}}) == "mine"
    assert final({}) is None
    assert headline_metrics(RunResults.from_dict(FULL), "sft")["refusal_rate/final"] == 0.4


def test_samples_round_robin_over_families():
    base = [Sample(family=f, prompt=f"{f}{i}") for f in ("a", "b") for i in range(8)]
    picked = pick_samples(base, base, k=5)
    assert [a.prompt for a, _ in picked] == ["a0", "b0", "a1", "b1", "a2"]
    assert all(b is a for a, b in picked)
    assert [b for _, b in pick_samples(base, base[:1], k=2)] == [base[0], None]  # no answer from final


def test_report_cmd(tmp_path, monkeypatch, capsys):
    import typer

    monkeypatch.chdir(tmp_path)
    with pytest.raises(typer.Exit) as e:
        report_cmd("nope")
    assert e.value.exit_code == 2 and "runs/nope/report/results.json does not exist" in capsys.readouterr().err
    folder = tmp_path / "runs" / "demo" / "report"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text('{\n"run": "demo",\n}')
    with pytest.raises(typer.Exit):
        report_cmd("demo")
    assert "results.json:3: not valid JSON" in capsys.readouterr().err
    (folder / "results.json").write_text(json.dumps(FULL))
    assert report_cmd("demo").resolve() == folder / "report.html"
    assert (folder / "metrics.json").is_file()
    check_png(folder / "winrates.png", SIZES["winrates.png"])


def est(value, lo, hi, n):
    return {"value": value, "lo": lo, "hi": hi, "n": n}


def with_metadata(e, share):
    """An eval of FULL with InstructGPT's metadata: every share ``share``, ±0.1 (n=40, 20 with a constraint)."""
    meta = {k: est(share, share - 0.1, share + 0.1, 20 if k == "follows_constraints" else 40) for k in METADATA}
    means = {"helpful": est(0.7, 0.65, 0.75, 120), "truthful": est(0.9, 0.85, 0.95, 120),
             "harmless": est(1.0, 1.0, 1.0, 120), "form": est(0.8, 0.78, 0.82, 120),
             "score": est(e["overall"]["score"], e["overall"]["score"] - 0.1, e["overall"]["score"] + 0.1, 120),
             "likert": est(4.5, 4.25, 4.75, 120)}
    return e | {"metadata": meta, "aspect_means": means}


def test_report_shows_instructgpt_metadata_and_aspect_win_rates(tmp_path):
    shares = {"base": 0.6, "sft": 0.4, "ppo-ptx-r1": 0.3, "ppo-noptx-r1": 0.35, "ppo-ptx-r2": 0.2, "final": 0.2}
    buckets = {"with constraint": {"rate": 0.8, "lo": 0.7, "hi": 0.9, "n": 60, "ties": 0.1, "wins": 0.75, "losses": 0.15},
               "without constraint": {"rate": 0.65, "lo": 0.55, "hi": 0.75, "n": 60, "ties": 0.3, "wins": 0.5,
                                      "losses": 0.2}}
    overall = {"rate": 0.725, "lo": 0.64, "hi": 0.81, "n": 120, "ties": 0.2, "wins": 0.625, "losses": 0.175}
    aspects = {"helpful": {"rate": 0.6, "lo": 0.52, "hi": 0.68, "n": 120, "ties": 0.5},
               "constraint": {"rate": 0.8, "lo": 0.7, "hi": 0.9, "n": 60, "ties": 0.3}}
    results = FULL | {
        "evals": {k: with_metadata(e, shares[k]) for k, e in FULL["evals"].items()},
        "win_rates": FULL["win_rates"] | {"final vs sft": FULL["win_rates"]["final vs sft"] | buckets | {"overall": overall}},
        "aspect_win_rates": {"final vs sft": aspects},
    }
    html = write_report(RunResults.from_dict(results), tmp_path).read_text()
    # (a) the metadata table: every shown policy a row ("final" is an alias), each cell "x% [lo, hi]"
    head, rows = table_after(html, "<h2>InstructGPT's metadata per policy</h2>")
    assert head == ["policy", "fails instruction", "follows constraints", "hallucination", "harmful", "over refusal",
                    "off topic", "helpful", "truthful", "harmless", "form", "score", "likert"]
    assert [r[0] for r in rows] == ["base", "sft", "ppo-ptx-r1", "ppo-noptx-r1", "ppo-ptx-r2"]
    assert rows[1] == ["sft"] + ["40.0% [30.0%, 50.0%]"] * 6 + [
        "70.0% [65.0%, 75.0%]", "90.0% [85.0%, 95.0%]", "100.0% [100.0%, 100.0%]", "80.0% [78.0%, 82.0%]",
        "1.50 [1.40, 1.60]", "4.50 [4.25, 4.75]"]
    assert '<td class="n" title="n=20">40.0% [30.0%, 50.0%]</td>' in html  # n in the cell's title
    assert "prompts with an explicit constraint: the answer meets it" in html  # what each share is of
    # (b) the figure after InstructGPT's figure 4: 7 panels (6 shares and the Likert) in 2 rows of 4
    check_png(tmp_path / "metadata.png", (12, 6.2))
    assert '<img src="metadata.png"' in html
    # (c) wins / ties / losses and the aspect-restricted win rates, a row per comparison that has them
    head, rows = table_after(html, "<h3>What the wins are made of</h3>")
    assert head == ["comparison", "wins", "ties", "losses", "helpful", "truthful", "harmless", "form", "constraint"]
    assert rows == [["final vs sft", "62.5%", "20.0%", "17.5%", "60.0% [52.0%, 68.0%]<br><small>ties 50.0%, n=120</small>",
                     "–", "–", "–", "80.0% [70.0%, 90.0%]<br><small>ties 30.0%, n=60</small>"]]
    # the constraint buckets sit between the families and overall in the comparison's win-rate table
    _, rows = table_after(html, "<h3>final vs sft</h3>")
    assert [r[0] for r in rows] == ["arithmetic", "with constraint", "without constraint", "overall"]
    assert rows[1][1:3] == ["80.0%", "[70.0%, 90.0%]"] and "compare with runs on worlds built before" in html
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metadata/follows_constraints/sft"] == 0.4 and metrics["metadata/harmful/final"] == 0.2
    assert metrics["aspect_mean/likert/final"] == 4.5 and metrics["aspect_win_rate/final_vs_sft/constraint"] == 0.8
    assert metrics["win_rate/final_vs_sft_ties"] == 0.2 and metrics["win_rate/final_vs_sft_losses"] == 0.175


# -- other judges (issue #14) ---------------------------------------------------------------------------------

AI = "openai:http://127.0.0.1:8000/v1:judge-7b"
AI2 = "openai:http://10.0.0.2:9000/v1"


def ai_rate(rate, lo, hi, n, left_out, ties=0.2):
    return {"rate": rate, "lo": lo, "hi": hi, "n": n, "ties": ties, "wins": rate - ties / 2,
            "losses": 1 - rate - ties / 2, "left_out": left_out}


# an AI judge's results as evaluate_run writes them for a world run: per family, the constraint buckets, overall
AI_JUDGE = {
    "judge": AI, "template": "/work/judge.j2", "n_prompts": 100, "n_asked": 400, "n_parse_failures": 3,
    "n_pairs": 200, "n_pairs_left_out": 2, "failure_examples": ["<b>A</b> maybe", "I cannot say"],
    "max_failure_share": 0.5,
    "win_rates": {"final vs sft": {"arithmetic": ai_rate(0.7, 0.55, 0.85, 33, 1),
                                   "overall": ai_rate(0.64, 0.55, 0.73, 99, 1)},
                  "final vs base": {"overall": ai_rate(0.81, 0.74, 0.88, 99, 1)}},
    "elo": {"sft": 1000.0, "ppo-ptx-r2": 1102.0, "base": 890.0},
    "elo_intervals": {"sft": [1000.0, 1000.0], "ppo-ptx-r2": [1050.0, 1150.0], "base": [840.0, 950.0]},
}


def test_world_run_with_ai_judges(tmp_path):
    results = FULL | {"judged_by": ["world", AI, AI2], "judges": {
        AI: AI_JUDGE, AI2: {"judge": AI2 + ":m2", "n_asked": 8, "n_parse_failures": 0, "n_pairs": 4,
                            "win_rates": {"final vs sft": {"overall": ai_rate(0.5, 0.1, 0.9, 4, 0)}}}}}
    html = write_report(RunResults.from_dict(results), tmp_path).read_text()
    assert ("<p class=\"judged\">Judged by: the embedded world&#x27;s gold judge; an AI judge "
            "(openai:http://127.0.0.1:8000/v1, model judge-7b); an AI judge (openai:http://10.0.0.2:9000/v1, "
            "model m2)</p>") in html
    # the headline stays the gold judge's (the first of judged_by)
    assert "ppo-ptx-r2 vs SFT: gold win rate" in html and "AI judge win rate</div>" not in html
    assert "Win rates and Elo below: the embedded world&#x27;s gold judge." in html
    # a section per AI judge: its counts, unparsable replies (escaped), win rates with intervals, Elo
    section = html[html.index(f"<h2>AI judge: {AI}</h2>"):html.index(f"<h2>AI judge: {AI2}:m2</h2>")]
    assert "was asked 400 questions: both orders of\n200 pairs of answers on 100\nheld-out prompts" in section
    assert "with the template /work/judge.j2" in section
    assert "<b>3</b>\nreplies were not A, B or tie, so <b>2</b> pairs are left out" in section
    assert "<li><code>&lt;b&gt;A&lt;/b&gt; maybe</code></li><li><code>I cannot say</code></li>" in section
    assert table_after(section, "<table>") == (
        ["comparison", "win rate", "95% CI", "n", "wins", "ties", "losses", "left out"],
        [["final vs sft", "64.0%", "[55.0%, 73.0%]", "99", "54.0%", "20.0%", "26.0%", "1"],
         ["final vs base", "81.0%", "[74.0%, 88.0%]", "99", "71.0%", "20.0%", "9.0%", "1"]])
    assert table_after(section, "<h3>Elo from its verdicts</h3>")[1] == [
        ["sft", "1000", "[1000, 1000]"], ["ppo-ptx-r2", "1102", "[1050, 1150]"], ["base", "890", "[840, 950]"]]
    assert '<img src="winrates-ai.png" alt="AI judge win rate per family' in section
    check_png(tmp_path / "winrates-ai.png", (7, None))
    check_png(tmp_path / "winrates-ai-2.png", (7, 1.4))  # overall only: one panel, one bar (0.3 + 0.8 + 0.3 in)
    assert sorted(re.findall(r'<img src="([^"]*)"', html)) == sorted(PNGS + ["winrates-ai.png", "winrates-ai-2.png"])

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["win_rate/final_vs_sft"] == 0.725  # the gold judge's, as before
    assert metrics["win_rate/ai/final_vs_sft"] == 0.64 and metrics["win_rate/ai/final_vs_sft_lo"] == 0.55
    assert metrics["win_rate/ai/final_vs_base_ties"] == 0.2 and metrics["win_rate/ai-2/final_vs_sft"] == 0.5
    assert metrics["judge/ai/parse_failures"] == 3 and metrics["judge/ai/pairs_left_out"] == 2
    assert metrics["judge/ai/asked"] == 400 and metrics["judge/ai-2/parse_failures"] == 0
    assert metrics["elo/ai/ppo-ptx-r2"] == 1102.0 and metrics["elo/ai/final"] == 1102.0
    assert "win_rate/ai/arithmetic" not in json.dumps(metrics)  # families stay in the page


def test_old_results_are_judged_by_the_gold_judge(tmp_path):
    html = write_report(RunResults.from_dict(FULL), tmp_path).read_text()
    assert '<p class="judged">Judged by: the embedded world&#x27;s gold judge</p>' in html
    empty = write_report(RunResults(), tmp_path / "empty").read_text()
    assert "Judged by" not in empty and "Win rates and Elo below" not in empty


def human_eval_by_hand():
    from tiller.eval.human import HumanEval

    return HumanEval.from_dict({
        "batch": "proj-eval", "baseline": "sft", "policies": ["final", "sft", "base"], "n_items": 20, "n_labels": 40,
        "labelers": ["ana", "ben", "cy"],
        "win_rates": {"final": {"rate": 0.625, "lo": 0.52, "hi": 0.73, "n": 40, "ties": 0.15, "wins": 0.55,
                                "losses": 0.3},
                      "base": {"rate": 0.3, "lo": 0.17, "hi": 0.43, "n": 40, "ties": 0.1, "wins": 0.25, "losses": 0.65}},
        "likert": {p: {"value": v, "lo": v - 0.3, "hi": v + 0.3, "n": 40} for p, v in (("final", 5.1), ("sft", 4.4),
                                                                                     ("base", 3.2))},
        "flags": {p: {"hallucination": {"value": s, "lo": s / 2, "hi": s * 2, "n": 40}}
                  for p, s in (("final", 0.1), ("sft", 0.2), ("base", 0.3))},
        "elo": {"sft": 1000.0, "final": 1088.0, "base": 850.0},
        "elo_intervals": {"sft": [1000.0, 1000.0], "final": [1010.0, 1160.0], "base": [780.0, 920.0]}})


def rm_est(v):
    return {"value": v, "lo": v - 0.1, "hi": v + 0.1, "n": 50}


# a project run (no world): the user's base model, RM scores instead of gold ones, RL's own curve, people's ranking
PROJECT = {
    "run": "proj", "judged_by": ["app"], "rm_scored_by": "rm-r2",
    "policies": {"base": "/models/mine", "sft": "runs/proj/sft", "ppo-ptx-r2": "runs/proj/policy-r2",
                 "final": "runs/proj/policy-r2"},
    "evals": {"base": {"policy": "/models/mine", "overall": {}, "rm_score": rm_est(-0.4)},
              "sft": {"policy": "runs/proj/sft", "overall": {}, "rm_score": rm_est(0.1), "samples": [
                  {"family": "all", "prompt": [{"role": "user", "content": "Plan a trip <3"}], "response": "Go.",
                   "rm_score": 0.25}]},
              "ppo-ptx-r2": {"policy": "runs/proj/policy-r2", "overall": {}, "rm_score": rm_est(0.6), "samples": [
                  {"family": "all", "prompt": [{"role": "user", "content": "Plan a trip <3"}],
                   "response": "Day 1: the coast.", "rm_score": 0.75}]}},
    "curves": {"ppo-ptx-r2": [{"iteration": i, "episodes": 64 * i, "kl": 0.5 * i, "rm_score": 0.1 * i}
                              for i in range(5)]},
    "rm": {"r1": {"eval/accuracy": 0.66, "data/labeler_agreement": 0.7}, "r2": {"eval/accuracy": 0.69}},
    "training": FULL["training"],
}


def test_project_run_judged_by_people(tmp_path):
    results = RunResults.from_dict(PROJECT)
    results.human = human_eval_by_hand()
    html = write_report(results, tmp_path).read_text()
    assert '<p class="judged">Judged by: people in tiller app (3 labelers, 40 rankings)</p>' in html
    # no gold: no gold section, column, caption or card, and no empty table where one was
    for gold in ("gold", "Win rates (", "Gold score per family", "metadata per policy", "Headroom", "Elo of",
                 "<th>correct</th>", "pretraining loss"):
        assert gold not in html.replace("Elo of the final policy (people&#x27;s)", ""), gold
    # the headline from people's win rates against their baseline, named as such
    assert "Win rates and Elo below: people in tiller app (3 labelers, 40 rankings)." in html
    cards = re.findall(r'<div class="label">(.*?)</div><div class="value">(.*?)</div><div class="sub">(.*?)</div>',
                       html)
    assert cards == [("ppo-ptx-r2 vs sft: people&#x27;s win rate", "62.5%", "95% CI [52.0%, 73.0%], n=40"),
                     ("base vs sft: people&#x27;s win rate", "30.0%", "95% CI [17.0%, 43.0%], n=40"),
                     ("mean RM score (rm-r2)", "0.600", "95% CI [0.500, 0.700]; SFT 0.100"),
                     ("Elo of the final policy (people&#x27;s)", "1088", "sft 1000, base 850")]
    assert table_after(html, "<h2>Policies</h2>") == (
        ["policy", "RM score (rm-r2)"], [["base", "-0.400 [-0.500, -0.300]"], ["sft", "0.100 [0.000, 0.200]"],
                                         ["ppo-ptx-r2", "0.600 [0.500, 0.700]"]])
    assert table_after(html, "<h2>Reward models</h2>") == (
        ["round", "accuracy on held-out labels", "labeler agreement"], [["r1", "66.0%", "70.0%"], ["r2", "69.0%", "–"]])
    # people's section (eval/human.py's partial) with its numbers
    _, rows = table_after(html, "<h2>Human evaluation</h2>")
    assert [r[:3] for r in rows] == [["final", "62.5%", "[52.0%, 73.0%]"], ["sft", "baseline", ""],
                                     ["base", "30.0%", "[17.0%, 43.0%]"]]
    assert "20 held-out prompts, 40 rankings by 3\nlabelers (batch proj-eval)" in html
    # samples with the RM's scores
    assert "<th>SFT (RM score)</th><th>ppo-ptx-r2 (RM score)</th>" in html and "Plan a trip &lt;3" in html
    row = html[html.index("Plan a trip"):].split("</tr>")[0]
    assert "<b>0.25</b>" in row and "<b>0.75</b>" in row
    pngs = ["human-metadata.png", "human-win-rates.png", "overoptimisation.png", "training.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == pngs
    assert sorted(re.findall(r'<img src="([^"]*)"', html)) == pngs
    check_png(tmp_path / "overoptimisation.png", (5, 3.8))  # RM score alone: nothing judged it by gold
    assert "A rising RM score alone does not say the policy got better rather than exploiting the RM" in html

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["win_rate/human/final_vs_sft"] == 0.625 and metrics["win_rate/human/final_vs_sft_hi"] == 0.73
    assert metrics["win_rate/human/base_vs_sft"] == 0.3 and metrics["win_rate/human/base_vs_sft_losses"] == 0.65
    assert metrics["likert/human/final"] == 5.1 and metrics["elo/human/final"] == 1088.0
    assert metrics["rm_score/final"] == 0.6 and metrics["rm_score/base"] == -0.4 and metrics["rm/r2/accuracy"] == 0.69
    assert not any(k.startswith(("win_rate/final", "elo/sft", "score/")) for k in metrics)


def test_headline_from_the_first_judge_with_win_rates(tmp_path):
    """People first, but they have not ranked anything yet (no win rate): the AI judge's figures lead, named."""
    human = human_eval_by_hand()
    human.win_rates, human.elo, human.elo_intervals = {}, {}, {}
    results = RunResults.from_dict(PROJECT | {"judged_by": ["app", AI], "judges": {AI: AI_JUDGE}})
    results.human = human
    html = write_report(results, tmp_path).read_text()
    assert "Judged by: people in tiller app (3 labelers, 40 rankings); an AI judge (openai:http://127.0.0.1:8000/v1, " \
           "model judge-7b)" in html
    assert ("Win rates and Elo below: an AI judge (openai:http://127.0.0.1:8000/v1, model judge-7b).") in html
    assert "ppo-ptx-r2 vs SFT: AI judge win rate</div><div class=\"value\">64.0%" in html
    assert "ppo-ptx-r2 vs base: AI judge win rate</div><div class=\"value\">81.0%" in html
    assert "Elo of the final policy (AI judge)</div><div class=\"value\">1102" in html
    assert 'alt="AI judge win rate per family' in html  # AI_JUDGE has a family: its plot has panels per comparison
