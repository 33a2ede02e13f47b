"""The stage x class summary table and its two plots."""


rule report:
    input:
        **{stage: f"{RES}/eval/{stage}.csv" for stage in STAGES},
    output:
        summary=report(f"{RES}/report/summary.csv", category="Summary", caption="../report/summary.rst"),
        miou=report(f"{RES}/report/miou_by_stage.png", category="Summary", caption="../report/miou_by_stage.rst"),
        per_class=report(f"{RES}/report/per_class_iou.png", category="Summary", caption="../report/per_class_iou.rst"),
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    log:
        log_of("report"),
    benchmark:
        benchmark_of("report")
    conda:
        "../../environment.yml"
    script:
        "../scripts/report.py"
