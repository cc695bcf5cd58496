"""From observations to parameters with a trained network (SPEC 8): the estimator that
``mechinfer.load_estimator`` returns (:mod:`.estimator`)."""
