"""The published numbers scripts/reproduce.py puts beside its own: the headline rows of each paper, with where
they come from. Only numbers that are in the papers' texts (shared/papers) or in shared/METHODS.md.

One dict per row:
    paper        the --paper key (the method whose result it is)
    table, row   the paper's table and the row's label
    method, head the script and the head that is measured: leader, s0, s1, ... (by position in --arch), ens,
                 fused, or mean (the mean of the deployed students: the table does not say which one)
    published    the published top-1 (%), None when the text holds no number
    baseline     what the gain is over: vanilla (independent training) or another method (FEFR's over DML)
    baseline_head, baseline_published   the baseline's head and published top-1 (None if not given)
    published_gain                      the published gain where the paper prints it (else method - baseline)
    recipe, flags                       how the row is run: `<method>.py --recipe RECIPE FLAGS`; the baseline
                                        runs the same recipe's shared flags (<method>.py --recipe RECIPE --baseline)
    dataset, archs, epochs              the setting, as the paper gives it (a test checks it against the recipe)
    best_or_last, runs, metric          which epoch and how many runs the paper reports, top-1 or top-5
    source                              paper, table and what the text says
"""

FFSD = "Li et al., Distilling a Powerful Student Model via Online Knowledge Distillation (FFSD), TNNLS 2022"
KDCL = "Guo et al., Online Knowledge Distillation via Collaborative Learning (KDCL), CVPR 2020"
MKB = ("Wang et al., Beyond Knowledge Distillation: Collaborative Learning for Bidirectional Model Assistance, "
       "IEEE Access 2018")


def ffsd_row(table, row, head, published, baseline, gain, archs, flags=(), dataset="cifar100", recipe="paper",
             epochs=300):
    return dict(paper="ffsd", table=table, row=row, method="ffsd", head=head, published=published,
                baseline="vanilla", baseline_head="mean", baseline_published=baseline, published_gain=gain,
                recipe=recipe, flags=list(flags), dataset=dataset, archs=archs, epochs=epochs,
                best_or_last="not stated" + (" (the official README reports the best epoch)" if table == "I" else ""),
                runs="mean ± std, number of runs not stated" if table == "I" else "not stated", metric="top1",
                source=f"{FFSD}, Table {table} ({'CIFAR-100' if dataset == 'cifar100' else 'ImageNet'}): "
                       f"{row} {published}, baseline {baseline}" + (f", gain {gain}" if gain is not None else ""))


ROWS = [
    # FFSD, Table I (CIFAR-100): baseline, the two common students, their ensemble, the fused classifier, the leader
    ffsd_row("I", "ResNet-32 leader", "leader", 74.85, 69.96, 4.90, "resnet32"),
    ffsd_row("I", "ResNet-32 common student 1", "s1", 74.30, 69.96, None, "resnet32"),
    ffsd_row("I", "ResNet-32 common student 2", "s2", 74.34, 69.96, None, "resnet32"),
    ffsd_row("I", "ResNet-32 ensemble of the common students", "ens", 79.93, 69.96, None, "resnet32"),
    ffsd_row("I", "ResNet-32 fused classifier", "fused", 76.04, 69.96, None, "resnet32"),
    ffsd_row("I", "ResNet-20 leader", "leader", 72.70, 68.58, 4.12, "resnet20", ["--arch", "resnet20"]),
    ffsd_row("I", "ResNet-56 leader", "leader", 75.80, 71.55, 4.25, "resnet56", ["--arch", "resnet56"]),
    ffsd_row("I", "WRN-16-2 leader", "leader", 75.81, 71.97, 3.83, "wrn_16_2", ["--arch", "wrn_16_2"]),
    ffsd_row("I", "WRN-40-2 leader", "leader", 79.14, 75.58, 3.47, "wrn_40_2", ["--arch", "wrn_40_2"]),
    # FFSD, Table III (ImageNet)
    ffsd_row("III", "ResNet-18 leader", "leader", 70.9, 69.7, 1.2, "resnet18", dataset="imagenet",
             recipe="paper-imagenet", epochs=90),
    ffsd_row("III", "ResNet-34 leader", "leader", 74.7, 73.2, 1.5, "resnet34", ["--arch", "resnet34"],
             dataset="imagenet", recipe="paper-imagenet", epochs=90),

    # KDCL, Table 7 (CIFAR-100): the pair ResNet-32 + WRN-16-2, KDCL-General with ICL (the defaults)
    *[dict(paper="kdcl", table="7", row=f"{name} in the pair, General + ICL", method="kdcl", head=head,
           published=acc, baseline="vanilla", baseline_head=head, baseline_published=base, published_gain=None,
           recipe="paper", flags=[], dataset="cifar100", archs="resnet32,wrn_16_2", epochs=200,
           best_or_last="not stated", runs="median of 5 runs", metric="top1",
           source=f"{KDCL}, Table 7 (CIFAR-100): Vanilla {base}, KDCL-General with ICL {acc} for {name}; "
                  f"Sec. 4.2: 'Accuracy is computed as the median of 5 runs'")
      for name, head, acc, base in (("ResNet-32", "s0", 74.3, 69.9), ("WRN-16-2", "s1", 75.5, 72.2))],
    # KDCL, Table 2 (ImageNet): the pair ResNet-50 + ResNet-18, General (the default) and Linear
    *[dict(paper="kdcl", table="2", row=f"{name} in the pair, {ens.capitalize()}", method="kdcl", head=head,
           published=acc, baseline="vanilla", baseline_head=head, baseline_published=base, published_gain=None,
           recipe="paper-imagenet", flags=[] if ens == "general" else ["--ensemble", ens], dataset="imagenet",
           archs="resnet50,resnet18", epochs=200, best_or_last="not stated", runs="not stated", metric="top1",
           source=f"{KDCL}, Table 2 (ImageNet): Vanilla {base}, KDCL-{ens.capitalize()} {acc} for {name}")
      for ens, name, head, acc, base in (("general", "ResNet-50", "s0", 77.1, 76.8),
                                         ("general", "ResNet-18", "s1", 72.0, 71.2),
                                         ("linear", "ResNet-50", "s0", 77.8, 76.8),
                                         ("linear", "ResNet-18", "s1", 73.1, 71.2))],

    # DML (CIFAR-100), as shared/METHODS.md quotes it (the DML paper's text is not in shared/papers)
    *[dict(paper="dml", table="1", row=f"ResNet-32 pair, network {k + 1}", method="dml", head=f"s{k}",
           published=acc, baseline="vanilla", baseline_head="mean", baseline_published=68.99, published_gain=None,
           recipe="paper", flags=[], dataset="cifar100", archs="resnet32", epochs=200, best_or_last="not stated",
           runs="not stated", metric="top1",
           source="Zhang et al., Deep Mutual Learning, CVPR 2018, CIFAR-100 results (its Table 1), as quoted in "
                  "shared/METHODS.md: 'ResNet-32 pair 68.99 -> about 71.2 / 70.8 (paper)'; rounded there")
      for k, acc in enumerate((71.2, 70.8))],

    # FFL: its paper is not in shared/papers; FFSD's Table II reports it in FFSD's (= FFL's) CIFAR-100 recipe
    *[dict(paper="ffl", table="FFSD-II", row=f"{name} pair, a student", method="ffl", head="mean",
           published=acc, baseline="vanilla", baseline_head="mean", baseline_published=base, published_gain=gain,
           recipe="paper", flags=flags, dataset="cifar100", archs=arch, epochs=300, best_or_last="not stated",
           runs="not stated", metric="top1",
           source=f"{FFSD}, Table II (CIFAR-100): FFL [19] {acc} (gain {gain}) for {name}, baseline {base}; "
                  f"which of the two networks is not said (the mean of both is measured)")
      for name, arch, flags, acc, base, gain in (("ResNet-32", "resnet32", [], 74.44, 69.96, 4.48),
                                                 ("WRN-16-2", "wrn_16_2", ["--arch", "wrn_16_2"], 75.26, 71.97, 3.29))],

    # FFCL: the text in shared/papers holds the tables' captions, not their numbers
    dict(paper="ffcl", table="5", row="ResNet18 pair, case A (RK + FK + NRK)", method="ffcl", head="mean",
         published=None, baseline="vanilla", baseline_head="mean", baseline_published=None, published_gain=None,
         recipe="paper", flags=[], dataset="cifar100", archs="resnet18", epochs=200, best_or_last="not stated",
         runs="mean ± std of 3 runs", metric="top1",
         source="FFCL, Int. J. Distributed Sensor Networks 2021, Table 5 (ablation, CIFAR-100, ResNet18-ResNet18, "
                "'average top-1 accuracy over three individual runs'); our copy of the text has the caption but not "
                "the numbers: they are not in our copy"),

    # FEFR: the text gives its Table 4 only as differences to DML (the tables are error rates, not in the text)
    *[dict(paper="fefr", table="4", row=f"{name} in the pair ResNet-32 + WRN-16-2", method="fefr", head=head,
           published=None, baseline="dml", baseline_head=head, baseline_published=None, published_gain=gain,
           recipe="paper", flags=["--arch", "resnet32,wrn_16_2"], dataset="cifar100", archs="resnet32,wrn_16_2",
           epochs=300, best_or_last="not stated", runs="not stated", metric="top1",
           source="FEFR (2023), Sec. 'Experimental results' on Table 4 (CIFAR-100): 'using ResNet-32 and WRN-16-2, "
                  "FEFR is roughly 2.18% and 1.45% greater than DML'; the table itself is not in our copy")
      for name, head, gain in (("ResNet-32", "s0", 2.18), ("WRN-16-2", "s1", 1.45))],

    # MKB-CL, Table 2: ResNet-34 + MobileNet (v1; MobileNetV2 stands in), IL = independent learning
    *[dict(paper="mkb_cl", table="2", row=f"{name} in the pair, {label}", method="mkb_cl", head=head,
           published=acc, baseline="vanilla", baseline_head=head, baseline_published=base, published_gain=None,
           recipe="paper", flags=[] if dataset == "cifar100" else ["--dataset", dataset], dataset=dataset,
           archs="resnet34,mobilenetv2", epochs=200, best_or_last="not stated", runs="not stated", metric="top1",
           source=f"{MKB}, Table 2 ({label}): IL {base}, CL (Ours) {acc} for {name}"
                  + ("; no augmentation on CIFAR-100 in the paper (Sec. IV-A), crop and flip here"
                     if dataset == "cifar100" else ""))
      for dataset, label, name, head, acc, base in (
          ("cifar100", "CIFAR-100", "ResNet-34", "s0", 74.83, 68.99),
          ("cifar100", "CIFAR-100", "MobileNet", "s1", 74.75, 73.65),
          ("cifar10", "CIFAR-10", "ResNet-34", "s0", 94.79, 91.82),
          ("cifar10", "CIFAR-10", "MobileNet", "s1", 93.57, 92.47))],
]
