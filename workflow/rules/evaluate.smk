"""Every stage's model on the target evaluation split: per-class IoU and mIoU (percent)."""


rule evaluate:
    input:
        checkpoint=f"{RES}/{{stage}}/model.pt",
        data=data_input(),
    output:
        report(
            f"{RES}/eval/{{stage}}.csv",
            category="Evaluation",
            subcategory="{stage}",
            caption="../report/eval.rst",
            labels={"stage": "{stage}"},
        ),
    params:
        cfg=view("evaluate"),
        key=lambda wc: KEYS[f"evaluate_{wc.stage}"],
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    log:
        log_of("evaluate_{stage}"),
    benchmark:
        benchmark_of("evaluate_{stage}")
    conda:
        "../../environment.yml"
    script:
        "../scripts/evaluate.py"
