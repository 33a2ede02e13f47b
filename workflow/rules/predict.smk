"""Optional (config `predict.images`): `proda predict` on a folder of your own images with one
stage's model of the experiment's first run, at `data.target.size` (proda/predict.py says how
images of other shapes are scaled); a few of the overlays go to the HTML report."""

from snakemake.exceptions import WorkflowError

PREDICT = CONFIG["predict"]


def predict_folder() -> str:
    """Where the predictions go: <results_dir>/<experiment>/predict/<stage>."""
    return f"{STUDY.folder}/predict/{PREDICT['stage']}"


def predict_model() -> str:
    """The chosen stage's model of the first run (the first seed's, in a study)."""
    first = next(iter(REPORTS.values()))
    return f"{first.models[PREDICT['stage']]}/model.pt"


def predict_images_list() -> list:
    """Every image of `predict.images`: inputs, so a new or changed image redoes the job."""
    from proda.predict import (
        PredictError,
        find_images,
    )  # torch: only when predict.images is set

    try:
        return [str(item.source) for item in find_images([PREDICT["images"]])]
    except PredictError as err:
        raise WorkflowError(f"config key 'predict.images': {err}") from None


def predict_report_outputs() -> dict:
    """Copies of a few overlays (evenly spaced through the folder), marked for the report."""
    from proda.predict import report_items, report_name

    count = PREDICT["overlays_in_report"]
    items = report_items(PREDICT["images"], count) if count else []
    return {
        f"overlay_{i}": report(
            f"{STUDY.folder}/report/predictions/{report_name(item)}",
            category="Predictions",
            caption="../report/predictions.rst",
        )
        for i, item in enumerate(items)
    }


def predict_targets() -> list:
    """What `all` asks for: the predictions and the report's overlays (none without images)."""
    if not PREDICT["images"]:
        return []
    return [predict_folder(), *predict_report_outputs().values()]


if PREDICT["images"]:

    rule predict:
        input:
            model=predict_model(),
            images=predict_images_list(),
        output:
            **predict_report_outputs(),
            folder=directory(predict_folder()),
        log:
            f"{predict_folder()}.log",
        benchmark:
            f"{predict_folder()}.benchmark.tsv"
        conda:
            "../../environment.yml"
        threads: threads_of("evaluate")
        resources:
            **resources_of("evaluate"),
        params:
            images=PREDICT["images"],
            size=CONFIG["data"]["target"]["size"],
            flip=PREDICT["flip"],
            precision="fp32" if CONFIG["parity"] else CONFIG["precision"],
        script:
            "../scripts/predict.py"
