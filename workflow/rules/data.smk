"""The toy-city benchmark: generated once per option set, shared by every experiment of a results_dir."""


rule toycity:
    output:
        directory("{node}"),
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("toycity"),
    conda:
        "../../environment.yml"
    threads: threads_of("toycity")
    resources:
        **resources_of("toycity"),
    params:
        cfg=view_of,
    script:
        "../scripts/toycity.py"
