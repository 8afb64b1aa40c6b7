"""The counterfactual plugin's pages: the classifier's, the CAE's and the explanations' index.html."""
