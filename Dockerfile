# birdray on the official Ray GPU image, for KubeRay (cluster/kuberay/) or as the cluster
# launcher's docker.image. See cluster/README.md, "The container image".
#
#   docker build -t registry.example.com/birdray/birdray:0.1.0-ray2.60.0-py311-gpu .
#
# Ray is never reinstalled: the image's Ray must equal the pin in pyproject.toml
# (tests/test_cluster_configs.py checks both), pip is held to it with a constraint, and the
# build fails if the installed version differs.
FROM rayproject/ray:2.60.0-py311-gpu

ARG RAY_VERSION=2.60.0

# The image runs as user "ray"; create the folder as that user so pip can build in it.
RUN mkdir -p /home/ray/birdray
WORKDIR /home/ray/birdray

# Dependencies first, in their own layer: code edits do not re-download torch.
COPY --chown=ray:users pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
    && echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/requirements.txt

# The package itself (no dependency resolution left to do), plus the entry scripts and their
# configs, which RayJob entrypoints call as /home/ray/birdray/jobs/<job>.py.
COPY --chown=ray:users birdray ./birdray
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build birdray.egg-info \
    && python -c "import ray, birdray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

ENV RAY_TRAIN_V2_ENABLED=1
