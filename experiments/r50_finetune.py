"""Fine-tune insightface's r50 (an arcface_torch ``model.pt``, e.g. from its model zoo) on your
own identities: a new ArcFace classifier, the loaded network at a tenth of the head's LR.

    python -m faceignite.align my_faces/raw my_faces/fp112 --template arcface   # 112 px crops
    python experiments/r50_finetune.py --dataroot my_faces/fp112 --pretrained model.pt \
        --lfw lfw-fp112

Defaults: ``--model r50``, 512-d, 112 px, insightface normalisation (the file's), ``--augment
flip`` (the alignment tool marks the folder), ArcFace (s 64, m 0.5) at lr 0.01 with
``--backbone_lr_scale 0.1``, 10 epochs with a short warm-up.  Any option can still be given.
"""
import sys

from handlers.training import main

if __name__ == "__main__":
    main(sys.argv[1:], name="r50_finetune", model="r50", loss="arcface", image_size=112,
         embedding_dim=512, lr=0.01, backbone_lr_scale=0.1, epochs=10, warmup_epochs=0.5,
         weight_decay=5e-4)
