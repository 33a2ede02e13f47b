"""The toy-city benchmark (generated once per option set, shared by every experiment of a
results_dir) and the check of every label the run reads (before the first training; its report
is kept, so a second run does not pay for it)."""


rule toycity:
    output:
        out=directory("{node}"),
        record="{node}.record.yaml",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("toycity"),
    conda:
        "../../environment.yml"
    threads: threads_of("toycity")
    resources:
        **resources_of("toycity"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"


rule check_data:
    input:
        data=DATA.get("data", []),
    output:
        out="{node}.yaml",
        record="{node}.record.yaml",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=nodes_of("check_data"),
    conda:
        "../../environment.yml"
    threads: threads_of("check_data")
    resources:
        **resources_of("check_data"),
    params:
        step=STUDY.step_of,
        view=STUDY.view_of,
    script:
        "../scripts/step.py"
