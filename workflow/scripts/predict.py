"""Rule predict: `proda predict` on the folder of config `predict.images`, with overlays, and
copies of a few of them for the report (proda/predict.py)."""
from proda.predict import predict_job

sm = snakemake  # noqa: F821  (injected by Snakemake)
predict_job(checkpoint=sm.input.model, images=sm.params.images, out_dir=sm.output.folder,
            report_pngs=[path for name, path in sm.output.items() if name != "folder"],
            size=sm.params.size, flip=sm.params.flip, batch_size=sm.config["eval"]["batch_size"],
            device=sm.config["device"], precision=sm.params.precision, threads=sm.threads,
            log=sm.log[0])
