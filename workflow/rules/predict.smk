"""Optional (config `predict.images`): `proda predict` on a folder of your own images with one
stage's model of the experiment's first run, at `data.target.size` (proda/predict.py says how
images of other shapes are scaled); a few of the overlays go to the HTML report."""

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
