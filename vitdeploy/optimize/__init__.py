"""The most accurate version of a model that runs within a latency budget, measured.

``vitdeploy optimize`` joins structural and token pruning under one latency budget, with
latencies predicted by a table measured for the model at hand (``vitdeploy lut build --for``)
and every candidate measured before it is trusted:

1. the table is checked (backend, batch, device, coverage of the model's shapes) and corrected
   for drift: the unpruned model is measured now and the table rescaled to predict it
   (``vitdeploy.lut.measure``);
2. candidates (``candidates``): NViT snapshots with a token plan solved for the budget on each,
   NViT alone at the budget on ``prune nvit``'s schedule, and each token method alone. Each is
   timed interleaved with the unpruned model; one over the budget is made again for a goal
   corrected by its measurement;
3. the race (``halving``): successive halving on a proxy sample held out of every fine-tune,
   each candidate compared only after the same fine-tuning as the others; the single-method runs
   stay in it to the end;
4. the best candidate gets the full distilled fine-tune from its weights before the race (the one
   a plain ``prune`` run gives its result), is exported with every check,
   measured again and evaluated on the test split; if it measures more than 3 % over the budget,
   the next candidate down takes its place (``run``). The report (``report``) shows every attempt.

``precisions="fp32,int8"`` adds INT8 candidates: a second search with its own INT8 latency table,
NViT pruner and quantized unpruned reference (``candidates``), whose candidates race with the float
ones; an INT8 pick is quantized and checked for accuracy before it is written (``run``).

``search`` restricts the candidates: ``nvit`` (structure only, to the budget), ``tokens`` (the
unpruned structure with each token method) or ``joint`` (all of them). Everything goes to one
output directory, replaced only when the run succeeds.
"""

from vitdeploy.optimize.config import SEARCHES, OptimizeConfig
from vitdeploy.optimize.report import summary_table
from vitdeploy.optimize.run import optimize

__all__ = ["SEARCHES", "OptimizeConfig", "optimize", "summary_table"]
