"""The initial class prototypes (feature centroids of the warm-up model on the target train split)."""


rule prototypes:
    input:
        unpack(inputs_of),
    output:
        "{node}.h5",
    log:
        "{node}.log",
    benchmark:
        "{node}.benchmark.tsv"
    wildcard_constraints:
        node=node_pattern("prototypes"),
    conda:
        "../../environment.yml"
    threads: threads_of("prototypes")
    resources:
        **resources_of("prototypes"),
    params:
        cfg=view_of,
    script:
        "../scripts/prototypes.py"
