"""`losslandscape paper`: the findings of Li et al. (2018), reproduced with the tool's own verbs.

`plan` lists the experiments (their full-scale CIFAR-10 specs live in `jobs/paper/`) and the
scales they run at; `run` trains the models and computes the surfaces, Hessian maps and the
trajectory, each step reused or resumed on a rerun; `verdicts` turns the files into numbers
and decides, by the rules it states, whether each claim held; `report` writes the page.
"""
