"""Per run (each seed's full chain, each bound and ablation): a manifest naming the run folders
it uses (proda prune keeps exactly those). Per seed's full chain: its evaluation CSVs, the stage x
class summary with its plots, the prediction grid and training curves, the pseudo-label quality.
Per experiment with several seeds, bounds or ablations: the study report (mean and std over seeds).
"""


rule manifest:
    output:
        "{folder}/manifest.yaml",
    log:
        "{folder}/manifest.log",
    wildcard_constraints:
        folder=folders_pattern(PLAN_FOLDERS),
    conda:
        "../../environment.yml"
    params:
        manifest=manifest_of,
    script:
        "../scripts/manifest.py"


rule report:
    input:
        unpack(evals_of),
    output:
        summary=report(
            "{folder}/report/summary.csv",
            category="Summary",
            caption="../report/summary.rst",
        ),
        miou=report(
            "{folder}/report/miou_by_stage.png",
            category="Summary",
            caption="../report/miou_by_stage.rst",
        ),
        per_class=report(
            "{folder}/report/per_class_iou.png",
            category="Summary",
            caption="../report/per_class_iou.rst",
        ),
        evals=directory("{folder}/eval"),
    log:
        "{folder}/report/report.log",
    benchmark:
        "{folder}/report/report.benchmark.tsv"
    wildcard_constraints:
        folder=folders_pattern(REPORTS),
    conda:
        "../../environment.yml"
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    script:
        "../scripts/report.py"


rule figures:
    input:
        unpack(figure_inputs),
    output:
        grid=report(
            "{folder}/report/prediction_grid.png",
            category="Pictures",
            caption="../report/prediction_grid.rst",
        ),
        curves=report(
            "{folder}/report/training_curves.png",
            category="Pictures",
            caption="../report/training_curves.rst",
        ),
    log:
        "{folder}/report/figures.log",
    benchmark:
        "{folder}/report/figures.benchmark.tsv"
    wildcard_constraints:
        folder=folders_pattern(REPORTS),
    conda:
        "../../environment.yml"
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        cfg=run_config_of,
    script:
        "../scripts/figures.py"


rule label_quality:
    input:
        unpack(quality_inputs),
    output:
        csv=report(
            "{folder}/label_quality.csv",
            category="Pseudo labels",
            caption="../report/label_quality.rst",
        ),
        plot=report(
            "{folder}/report/label_quality.png",
            category="Pseudo labels",
            caption="../report/label_quality.rst",
        ),
    log:
        "{folder}/label_quality.log",
    benchmark:
        "{folder}/label_quality.benchmark.tsv"
    wildcard_constraints:
        folder=folders_pattern(REPORTS),
    conda:
        "../../environment.yml"
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    params:
        cfg=run_config_of,
    script:
        "../scripts/label_quality.py"


if STUDY.aggregated:

    rule study_report:
        input:
            unpack(study_inputs),
        output:
            **study_report_outputs(),
        log:
            f"{STUDY.folder}/study/study_report.log",
        benchmark:
            f"{STUDY.folder}/study/study_report.benchmark.tsv"
        conda:
            "../../environment.yml"
        threads: threads_of("report")
        resources:
            **resources_of("report"),
        params:
            layout=study_layout(),
        script:
            "../scripts/study_report.py"
