"""Per experiment: its evaluation CSVs, the stage x class summary with its plots, and a manifest
naming the run folders it used (proda prune keeps exactly those)."""


rule report:
    input:
        unpack(plan_inputs),
    output:
        summary=report(
            "{results}/{experiment}/report/summary.csv",
            category="Summary",
            caption="../report/summary.rst",
        ),
        miou=report(
            "{results}/{experiment}/report/miou_by_stage.png",
            category="Summary",
            caption="../report/miou_by_stage.rst",
        ),
        per_class=report(
            "{results}/{experiment}/report/per_class_iou.png",
            category="Summary",
            caption="../report/per_class_iou.rst",
        ),
        evals=directory("{results}/{experiment}/eval"),
        manifest="{results}/{experiment}/manifest.yaml",
    log:
        "{results}/{experiment}/report/report.log",
    benchmark:
        "{results}/{experiment}/report/report.benchmark.tsv"
    wildcard_constraints:
        results=re.escape(CONFIG["results_dir"]),
        experiment="|".join(map(re.escape, PLANS)),
    conda:
        "../../environment.yml"
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    params:
        manifest=manifest_of,
    script:
        "../scripts/report.py"
