from PIL import Image

from toolkit.core.metrics import ClassificationReport


def test_report_counts_and_png(tmp_path):
    report = ClassificationReport.from_predictions([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert report.correct == 4 and report.total == 6
    assert report.per_class_accuracy() == {"a": 0.5, "b": 1.0, "c": 2 / 3}
    assert report.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    d = report.to_dict()
    assert d["per_class"]["c"]["support"] == 3
    png = report.save_confusion_png(tmp_path / "cm.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 100


def test_class_without_samples_has_no_accuracy():
    report = ClassificationReport.from_predictions([0], [0], ["a", "b"])
    assert report.per_class_accuracy()["b"] is None
