"""The match stage: one query batch at a time, against database shards held by the workers.

- :mod:`~msdmatch.stages.match.plan`: shards, query batches and the identity of a run;
- :mod:`~msdmatch.stages.match.shard`: a database shard loaded on a worker;
- :mod:`~msdmatch.stages.match.prune`: PSE top-K on each shard, merged;
- :mod:`~msdmatch.stages.match.rerank`: DHS Hamming-DTW rerank of the pruned candidates;
- :mod:`~msdmatch.stages.match.screen`: coarse cosine DTW of the top R;
- :mod:`~msdmatch.stages.match.verify`: full cosine DTW of the top V and the query span;
- :mod:`~msdmatch.stages.match.batch`: a batch's queries and its MATCHES rows;
- :mod:`~msdmatch.stages.match.job`: the job, :func:`~msdmatch.stages.match.job.run`.
"""
