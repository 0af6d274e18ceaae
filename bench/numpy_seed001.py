"""The vanishing-gradient notebook's model D in plain NumPy: the rival of stack_bench.py's case 1.

A transcription of the notebook's own code (its Layer and DeepNetwork classes, forward,
backward and update, and its training loop), for model D only: layer_dims
[3, 8, 8, 8, 8, 8, 8, 8, 8, 1] (8 hidden ReLU layers of 8 units, a linear head), weights
U(-0.5, 0.5), zero biases, 400 samples of x ~ U(-2, 2)^3 with y = sin(x0) + 0.5 x1^2 - 0.8 x2
(drawn once, with the notebook's np.random.seed(42)), 1000 full-batch epochs of SGD at lr 0.01
on the mean squared error. The notebook trains once from the seed-42 stream; here each of seeds
0..N-1 reseeds NumPy before its model is built, and the trainings run one after another in this
one process, as a user would loop over seeds. Prints each seed's final loss.

    python bench/numpy_seed001.py [--seeds 20]

stack_bench.py times this whole process (start-up included) against
`deeprun -m depth=8 width=8 init=uniform optimizer=sgd lr=0.01 epochs=1000 data.n=400 act=relu seed='range(0,20)'`.
"""

from __future__ import annotations

import argparse

import numpy as np

MODEL_D = [3, 8, 8, 8, 8, 8, 8, 8, 8, 1]
EPOCHS = 1000
LR = 0.01


def make_data() -> tuple[np.ndarray, np.ndarray]:
    """The notebook's data: 400 rows of x ~ U(-2, 2)^3, samples as columns (X is 3 x 400, y 1 x 400)."""
    np.random.seed(42)
    X = np.random.uniform(-2, 2, (400, 3))
    y = np.sin(X[:, 0]) + 0.5 * (X[:, 1] ** 2) - 0.8 * X[:, 2]
    y = y.reshape(-1, 1)
    return X.T, y.T


def relu(z):
    return np.maximum(0, z)


def relu_deriv(z):
    return (z > 0).astype(float)


def sigmoid(z):
    z = np.clip(z, -500, 500)
    return 1 / (1 + np.exp(-z))


def sigmoid_deriv(z):
    sig = sigmoid(z)
    return sig * (1 - sig)


class Layer:
    def __init__(self, neurons_in, neurons_out, activation_name="relu"):
        self.W = np.random.uniform(-0.5, 0.5, (neurons_out, neurons_in))
        self.b = np.zeros((neurons_out, 1))
        self.activation_name = activation_name

        self.Z = None
        self.A_prev = None
        self.dW = None
        self.db = None

    def activate(self, Z):
        if self.activation_name == "relu": return relu(Z)
        elif self.activation_name == "sigmoid": return sigmoid(Z)
        elif self.activation_name == "linear": return Z

    def activate_deriv(self, Z):
        if self.activation_name == "relu": return relu_deriv(Z)
        elif self.activation_name == "sigmoid": return sigmoid_deriv(Z)
        elif self.activation_name == "linear": return np.ones_like(Z)


class DeepNetwork:
    def __init__(self, layer_dims, hidden_activation="relu"):
        self.layers = []
        for i in range(len(layer_dims) - 1):
            act = hidden_activation if i < len(layer_dims) - 2 else "linear"
            self.layers.append(Layer(layer_dims[i], layer_dims[i + 1], act))

    def forward(self, X):
        A = X
        for layer in self.layers:
            layer.A_prev = A
            layer.Z = np.dot(layer.W, layer.A_prev) + layer.b
            A = layer.activate(layer.Z)
        return A

    def backward(self, y, y_hat):
        N = y.shape[1]
        dA = -2 * (y - y_hat) / N
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            dZ = dA * layer.activate_deriv(layer.Z)
            layer.dW = np.dot(dZ, layer.A_prev.T)
            layer.db = np.sum(dZ, axis=1, keepdims=True)
            if i > 0:
                dA = np.dot(layer.W.T, dZ)

    def update(self, lr):
        for layer in self.layers:
            layer.W -= lr * layer.dW
            layer.b -= lr * layer.db


def train_model(X, y, seed: int, layer_dims=MODEL_D, hidden_act="relu") -> dict:
    """The notebook's train_model for one seed: its loop, loss@200, final loss and the two gradient norms."""
    np.random.seed(seed)
    model = DeepNetwork(layer_dims, hidden_activation=hidden_act)
    loss_200 = None
    for epoch in range(EPOCHS):
        y_hat = model.forward(X)
        loss = np.mean((y - y_hat) ** 2)
        if epoch == 199:
            loss_200 = loss
        model.backward(y, y_hat)
        model.update(LR)
    final_loss = np.mean((y - model.forward(X)) ** 2)
    grad_norm_L1 = np.sqrt(np.sum(model.layers[0].dW ** 2))
    grad_norm_Last = np.sqrt(np.sum(model.layers[-2].dW ** 2))
    return {"loss@200": loss_200, "final_loss": final_loss, "grad_norm_first": grad_norm_L1,
            "grad_norm_last": grad_norm_Last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="train seeds 0..N-1 (default 20)")
    args = parser.parse_args()
    X, y = make_data()
    for seed in range(args.seeds):
        result = train_model(X, y, seed)
        print(f"seed {seed:2d}: final loss {result['final_loss']:.4f} (loss@200 {result['loss@200']:.4f})", flush=True)


if __name__ == "__main__":
    main()
