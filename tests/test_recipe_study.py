"""The recipe study's curve (benchmarks/recipe_study.py --curve): its record keeps every point
scored, also after the run folders are gone."""

import json
import os

import pytest

from benchmarks.recipe_study import plot_curve

pytestmark = pytest.mark.backend_independent  # see tests/run.sh

REFERENCES = ["y dijo dios", "sea la luz", "y fue la luz"]


def scored_run(folder, hypotheses, steps):
    """A run folder as training and `kerasformer-evaluate` leave it, with what the curve reads."""
    os.makedirs(os.path.join(folder, "eval"))
    test_file = os.path.join(folder, "test.tsv")
    with open(test_file, "w", encoding="utf-8") as file:
        file.writelines(f"source {i}\t{reference}\n" for i, reference in enumerate(REFERENCES))
    with open(os.path.join(folder, "eval", "test.hyp.txt"), "w", encoding="utf-8") as file:
        file.write("\n".join(hypotheses) + "\n")
    with open(os.path.join(folder, "eval", "test.scores.json"), "w", encoding="utf-8") as file:
        json.dump({"file": test_file, "bleu": 10.0 * steps / 100, "chrf": 30.0}, file)
    with open(os.path.join(folder, "metrics.json"), "w", encoding="utf-8") as file:
        json.dump({"history": {"val_loss": [4.0, 3.5]}, "total_steps": steps, "train_tokens_per_second": 5000}, file)


def test_the_curve_keeps_recorded_points_whose_run_folders_are_gone(tmp_path):
    runs, out = tmp_path / "runs", str(tmp_path / "quality_curve")
    scored_run(runs / "12min" / "chosen", ["y dijo dios", "sea la luz", "y fue luz"], steps=100)
    scored_run(runs / "12min" / "paper", ["y y y", "y y y", "y y y"], steps=20)
    plot_curve([12, 30], ["chosen", "paper"], str(runs), out)
    first = json.load(open(out + ".json", encoding="utf-8"))["points"]
    assert [(p["variant"], p["minutes"], p["steps"]) for p in first] == [("chosen", 12, 100), ("paper", 12, 20)]
    assert first[1]["distinct"] == 0.333  # the looping model's three identical lines

    # Plotted again with its folder here, a recorded point keeps its description (the base
    # config may have changed since it ran).
    record = json.load(open(out + ".json", encoding="utf-8"))
    record["points"][0]["what"] = first[0]["what"] = "the config of its day"
    json.dump(record, open(out + ".json", "w", encoding="utf-8"))
    plot_curve([12, 30], ["chosen", "paper"], str(runs), out)
    assert json.load(open(out + ".json", encoding="utf-8"))["points"] == first

    # Another machine: the 12-minute folders are gone, a 30-minute point is new.
    os.rename(runs, tmp_path / "gone")
    scored_run(runs / "30min" / "chosen", REFERENCES, steps=250)
    plot_curve([12, 30], ["chosen", "paper"], str(runs), out)
    points = json.load(open(out + ".json", encoding="utf-8"))["points"]
    assert [(p["variant"], p["minutes"], p["bleu"]) for p in points] == [
        ("chosen", 12, 10.0), ("chosen", 30, 25.0), ("paper", 12, 2.0)]
    assert points[0] == first[0]
    assert os.path.getsize(out + ".png") > 0


def test_a_variant_trained_again_takes_today_s_description(tmp_path):
    runs, out = tmp_path / "runs", str(tmp_path / "quality_curve")
    scored_run(runs / "12min" / "paper", REFERENCES, steps=20)
    plot_curve([12], ["paper"], str(runs), out)
    record = json.load(open(out + ".json", encoding="utf-8"))
    today = record["points"][0]["what"]
    record["points"][0]["what"] = "the placement of an earlier day"
    json.dump(record, open(out + ".json", "w", encoding="utf-8"))
    os.rename(runs, tmp_path / "gone")
    scored_run(runs / "12min" / "paper", REFERENCES, steps=35)  # trained again: another run
    plot_curve([12], ["paper"], str(runs), out)
    assert json.load(open(out + ".json", encoding="utf-8"))["points"][0]["what"] == today
